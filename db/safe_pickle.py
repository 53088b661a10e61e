"""What latlab's restricted unpicklers (legacy LUTs, HALP/MDP mask files) share.

* :func:`latin1_bytes` stands in for ``_codecs.encode``, which pickle protocols 0-2 use to store ``bytes``
  (numpy scalars and arrays): latin-1 text back to bytes, and nothing else.
* :func:`check_nesting` reads the opcodes before anything is built and refuses containers nested deeper
  than any LUT or mask file needs: Python's unpickler overflows the C stack (a crash, not an exception)
  hashing or printing an object nested a few hundred thousand levels deep.
"""

from __future__ import annotations

import pickletools

from db.errors import LatlabError

__all__ = ["MAX_NESTING", "check_nesting", "latin1_bytes"]

#: Deepest container nesting admitted; a numpy scalar in a dict is 5 levels deep, an array 6.
MAX_NESTING = 32

# Opcodes that add to the container below their arguments (it stays as deep as its deepest item + 1).
_FILLS = {"SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS", "BUILD"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


def latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 call it to store bytes (latin-1 text only)."""
    if encoding != "latin1" or not isinstance(text, str):
        raise LatlabError(f"refusing to load: the pickle calls _codecs.encode with encoding {encoding!r} (pickle "
                          "protocols 0-2 store bytes with latin1 only)")
    return text.encode("latin1")


def check_nesting(data: bytes, source: str, limit: int = MAX_NESTING) -> None:
    """Raise :class:`LatlabError` when the pickle ``data`` builds containers nested deeper than ``limit``.

    Simulates the unpickler's stack with the depth of each item (0 for a scalar, 1 + its deepest item for
    what an opcode builds from others) without building anything. A malformed stream is left to the
    unpickler, which reports it.
    """
    stack: list[int] = []
    marks: list[int] = []
    memo: dict[object, int] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name in _PUTS or name == "MEMOIZE":
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1] if stack else 0
                continue
            if name in _GETS:
                stack.append(memo.get(arg, 0))
                continue
            taken: list[int] = []
            if pickletools.markobject in op.stack_before:
                start = marks.pop() if marks else 0
                taken, stack[start:] = stack[start:], []
                below = op.stack_before.index(pickletools.markobject)
            else:
                below = len(op.stack_before)
            container = [stack.pop() if stack else 0 for _ in range(below)][::-1]
            if not op.stack_after:  # POP, STOP, ...
                continue
            if name in _FILLS:  # [container, items...] -> the same container
                depth = max(container[0] if container else 0, 1 + max(container[1:] + taken, default=-1))
            else:
                depth = 1 + max(container + taken, default=-1)
            if depth > limit:
                raise LatlabError(f"refusing to load {source}: its objects nest more than {limit} levels deep "
                                  "(a LUT or mask file nests a few; this one would crash the unpickler)")
            if name == "DUP":
                stack += container * 2
            else:
                stack += [depth] * len(op.stack_after)
    except LatlabError:
        raise
    except Exception:  # noqa: BLE001  (not a pickle stream genops can read: the unpickler says what is wrong)
        return
