"""Code execution for lessons: a small interpreter for arithmetic, names, ``print`` and
``sleep``, with a deadline. Learners' code runs here instead of in a container pool."""

from __future__ import annotations

import ast
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class ExecutionTimeout(Exception):
    """The code ran past its time limit."""


class UnsupportedCode(ValueError):
    """The code uses something the sandbox does not run."""


@dataclass
class Execution:
    deadline: float
    names: dict[str, Any] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)


def execute(code: str, timeout_s: float) -> str:
    """Run ``code``; its printed output. Errors in the code propagate as they are."""
    run = Execution(deadline=time.monotonic() + timeout_s)
    for statement in ast.parse(code).body:
        _run_statement(statement, run)
    return "\n".join(run.output)


def _run_statement(statement: ast.stmt, run: Execution) -> None:
    if time.monotonic() > run.deadline:
        raise ExecutionTimeout("execution exceeded its time limit")
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target = statement.targets[0]
        if isinstance(target, ast.Name):
            run.names[target.id] = _evaluate(statement.value, run)
            return
    if isinstance(statement, ast.Expr):
        _evaluate(statement.value, run)
        return
    raise UnsupportedCode(f"unsupported statement: {type(statement).__name__}")


def _evaluate(node: ast.expr, run: Execution) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return run.names[node.id]
    if isinstance(node, ast.BinOp):
        return _binary(node.op, _evaluate(node.left, run), _evaluate(node.right, run))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _call(node.func.id, [_evaluate(arg, run) for arg in node.args], run)
    raise UnsupportedCode(f"unsupported expression: {type(node).__name__}")


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    return _OPERATORS[type(op)](left, right)


def _call(name: str, args: list[Any], run: Execution) -> Any:
    if name == "print":
        run.output.append(" ".join(str(arg) for arg in args))
        return None
    if name == "sleep":
        remaining = run.deadline - time.monotonic()
        time.sleep(max(0.0, min(float(args[0]), remaining)))
        if float(args[0]) > remaining:
            raise ExecutionTimeout("execution exceeded its time limit")
        return None
    raise UnsupportedCode(f"unknown function {name}()")
