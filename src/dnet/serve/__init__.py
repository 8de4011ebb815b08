"""`dnet serve`: an OpenAI-compatible HTTP server over a model compiled by dnet, on one node or a cluster.

    served = load_served("smollm2", topology=None, slots=16)   # or a GGUF file, a HF folder, "minilm"
    app = create_app(served, api_key=None)                      # a FastAPI app; `run` serves it with uvicorn

See docs/serve.md.
"""
from dnet.serve.app import create_app
from dnet.serve.models import ServedEncoder, ServedLLM, load_served
from dnet.serve.server import Server, check_bind

__all__ = ["Server", "ServedEncoder", "ServedLLM", "check_bind", "create_app", "load_served"]
