"""Object IR: objects with member symbols, scoped symbol tables, functions as expression trees."""
from dnet.objects.ir import (
    ABSENT, Apply, Argument, Call, Expr, Function, GetItem, If, Let, Lit, Object, ObjectModule, Present,
    Ref, TupleExpr,
)
from dnet.objects.symbols import Symbol, SymbolFlag, SymbolKind, SymbolTable

__all__ = [
    "ABSENT", "Apply", "Argument", "Call", "Expr", "Function", "GetItem", "If", "Let", "Lit", "Object",
    "ObjectModule", "Present", "Ref", "TupleExpr", "Symbol", "SymbolFlag", "SymbolKind", "SymbolTable",
]
