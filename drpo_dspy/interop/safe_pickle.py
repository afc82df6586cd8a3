"""Reading untrusted pickles (such as the original DRPO release's ``output.pkl``) without running their code.

``pickle.load`` imports whatever classes and functions a file names and calls them, so a crafted file can run any
command. ``load_untrusted_pickle`` uses a restricted unpickler instead:

- a short allow-list of harmless builtins and standard containers is rebuilt for real (``set``, ``frozenset``,
  ``complex``, ``bytearray``, ``range``, ``slice``, ``collections.OrderedDict``/``deque``, ``datetime`` values,
  ``decimal.Decimal``, and ``_codecs.encode``, which protocols 0-2 use to store bytes); container constructors refuse
  lazy inputs (``list(range(10**12))``, ``bytearray(10**12)``) that would blow a small file up in memory;
- any other name in a denied module (``os``, ``subprocess``, ``sys``, ``builtins``' functions such as ``eval`` or
  ``__import__``, ``importlib``, ``pickle``, ``socket``, ``ctypes``, ...) makes loading fail with
  ``UnsafePickleError`` before anything is called;
- every other class is replaced by an inert stand-in (a subclass of ``PickledObject``) that only records what the
  pickle gave it: constructor arguments and state. Nothing is imported and no code from the file runs, yet the data
  is readable: ``node.state`` (a key of the pickled ``__dict__``), ``result[0]`` (a constructor argument, e.g. a
  named-tuple field) and ``node["state"]`` all work; ``pickle_args``/``pickle_state`` hold the raw records.

``extract_prompts`` then finds the system prompts in the original release's search result.
"""

from __future__ import annotations

import codecs
import collections
import datetime
import decimal
import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drpo_dspy.primitives.checks import is_whole

MAX_PICKLE_BYTES = 256 * 1024 * 1024


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a function or class that could run code; nothing from it was executed."""


def _materialized(build: Any) -> Any:
    """``build`` (a container or bytes constructor) refusing lazy inputs that would expand far beyond the file's
    size, such as ``list(range(10**12))`` or ``bytearray(10**12)``."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else None
        if isinstance(first, range) or (is_whole(first) and build in (bytes, bytearray)):
            raise UnsafePickleError(f"refusing {build.__name__}({type(first).__name__}): a pickle that expands "
                                    "a small file into unbounded memory")
        return build(*args, **kwargs)

    guarded.__name__ = build.__name__
    return guarded


def _latin1(text: Any, encoding: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r:.20}): only the latin1 "
                                "text-to-bytes step of pickle protocols 0-2 is allowed")
    return codecs.encode(text, "latin1")


_SAFE_BUILTINS = {name: _materialized(value) for name, value in {
    "set": set, "frozenset": frozenset, "bytearray": bytearray, "list": list, "dict": dict, "tuple": tuple,
    "bytes": bytes}.items()}
_SAFE_BUILTINS.update({"object": object, "complex": complex, "range": range, "slice": slice, "str": str, "int": int,
                       "float": float, "bool": bool})
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("builtins", name): value for name, value in _SAFE_BUILTINS.items()},
    **{("__builtin__", name): value for name, value in _SAFE_BUILTINS.items()},  # protocols 0-2 spell it so
    ("__builtin__", "xrange"): range,
    ("_codecs", "encode"): lambda text, encoding="utf-8": _latin1(text, encoding),  # protocols 0-2 store bytes so
    ("collections", "OrderedDict"): _materialized(collections.OrderedDict),
    ("collections", "deque"): _materialized(collections.deque),
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("decimal", "Decimal"): decimal.Decimal,
}


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0 and 1), for stand-ins only: the base value is recorded as an argument."""
    if isinstance(cls, type) and issubclass(cls, PickledObject) and (base is None or base in _SAFE_BUILTINS.values()):
        return cls.__new__(cls) if base is object or state is None else cls.__new__(cls, state)
    raise UnsafePickleError(f"refusing to reconstruct {cls!r} from {base!r}")


# Modules whose globals are never rebuilt, not even as stand-ins: naming one is a sign of a crafted file.
_DENIED_MODULES = frozenset({
    "builtins", "__builtin__", "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil", "importlib",
    "imp", "pickle", "_pickle", "cPickle", "copyreg", "copy_reg", "marshal", "types", "socket", "ctypes", "runpy",
    "code", "codeop", "pty", "webbrowser", "functools", "operator", "inspect", "io", "_io", "tempfile", "pathlib",
    "multiprocessing", "threading", "_thread", "signal", "platform", "gc", "weakref", "asyncio", "pydoc", "timeit",
    "cProfile", "profile", "pdb", "bdb", "trace", "ensurepip", "venv", "zipimport", "shelve", "dbm", "sqlite3",
    "urllib", "http", "ftplib", "smtplib", "telnetlib", "xmlrpc", "ssl", "select", "selectors", "mmap", "resource",
    "fcntl", "termios", "tty", "pwd", "grp", "spwd", "crypt", "syslog", "dill", "cloudpickle", "joblib", "numpy.lib",
    "torch", "nose", "pytest", "setuptools", "pip", "distutils", "site", "sysconfig", "codecs", "_codecs", "zipfile",
    "tarfile", "gzip", "bz2", "lzma", "glob", "fileinput", "_posixsubprocess", "_winapi", "msvcrt", "winreg",
    "_ctypes", "ast", "dis", "linecache", "traceback", "logging", "atexit", "sched", "concurrent",
})


def _denied(module: str) -> bool:
    top = module.split(".", 1)[0]
    return module in _DENIED_MODULES or top in _DENIED_MODULES


class PickledObject:
    """Inert stand-in for an object of a class that was not imported.

    ``pickle_args``/``pickle_kwargs`` hold the constructor arguments the pickle gave (for named tuples, the fields),
    ``pickle_state`` what it restored into the object, ``pickle_items`` what it appended or set as items. Keys of a
    dict state read as attributes (``node.state``) or items (``node["state"]``); ``obj[0]`` is the first argument.
    """

    _pickled_class = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        object.__setattr__(obj, "pickle_args", args)
        object.__setattr__(obj, "pickle_kwargs", kwargs)
        object.__setattr__(obj, "pickle_state", None)
        object.__setattr__(obj, "pickle_items", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a REDUCE call records its arguments in __new__
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[1] is None or isinstance(state[1], dict)):
            attributes, slots = state  # (dict state, slot state)
            merged = {**(attributes or {}), **(slots or {})} if isinstance(attributes, dict | type(None)) else state
            object.__setattr__(self, "pickle_state", merged)
        else:
            object.__setattr__(self, "pickle_state", state)

    # containers restored into a stand-in (list/dict subclasses) are recorded, never run
    def append(self, item: Any) -> None:
        self.pickle_items.append(item)

    def extend(self, items: Any) -> None:
        self.pickle_items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.pickle_items.append((key, value))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return self.pickle_args[key]
        state = self.pickle_state if isinstance(self.pickle_state, dict) else {}
        if key in state:
            return state[key]
        raise KeyError(key)

    def __getattr__(self, name: str) -> Any:
        state = object.__getattribute__(self, "pickle_state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"{type(self)._pickled_class} stand-in has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a PickledObject stand-in is read-only")

    def __repr__(self) -> str:
        fields = [repr(a)[:40] for a in self.pickle_args[:3]]
        if isinstance(self.pickle_state, dict):
            fields += [f"{k}=..." for k in list(self.pickle_state)[:5]]
        return f"<stand-in {self._pickled_class}({', '.join(fields)})>"


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any):
        super().__init__(file)
        self._stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")):
            return _reconstructor
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if _denied(module):
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: this pickle asks to import a function that could run code "
                "(a crafted or untrusted file); nothing from it was executed"
            )
        key = (module, name)
        if key not in self._stand_ins:
            attributes = {"_pickled_class": f"{module}.{name}", "__module__": __name__}
            self._stand_ins[key] = type(name.rsplit(".", 1)[-1], (PickledObject,), attributes)
        return self._stand_ins[key]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent references (it needs external objects)")


def loads_untrusted_pickle(data: bytes) -> Any:
    """Unpickle ``data`` with the restricted unpickler (see the module docstring)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a readable pickle ({type(exc).__name__}: {exc})") from exc


def load_untrusted_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle file without importing or calling anything it names, except a few harmless builtins.

    Raises ``UnsafePickleError`` for files that name dangerous functions (``os.system``, ``builtins.eval``,
    ``subprocess.Popen``, ...), ``ValueError`` for files that are not pickles, ``FileNotFoundError`` when missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise ValueError(f"{path} is {size} bytes, above the {MAX_PICKLE_BYTES}-byte limit for untrusted pickles")
    try:
        return loads_untrusted_pickle(path.read_bytes())
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def pickled_class(obj: Any) -> str | None:
    """The ``module.Class`` a stand-in replaces, or None for ordinary values."""
    return type(obj)._pickled_class if isinstance(obj, PickledObject) else None


def walk(obj: Any, *, max_nodes: int = 1_000_000) -> Iterator[Any]:
    """Every value reachable from ``obj`` (depth first, each container once)."""
    seen: set[int] = set()
    stack = [obj]
    while stack and len(seen) < max_nodes:
        value = stack.pop()
        if isinstance(value, str | bytes | int | float | bool | type(None)):
            yield value
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        yield value
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple | set | frozenset | collections.deque):
            children = list(value)
        elif isinstance(value, PickledObject):
            children = [*value.pickle_args, *value.pickle_kwargs.values(), value.pickle_state, *value.pickle_items]
        else:
            children = []
        stack.extend(reversed(children))


_SUB_RESULT = "prompt_align.world_model.SubResult"
_SEARCH_RESULT = "reasoner.search_algo.beam_search.BeamSearchResult"


def best_path(obj: Any) -> list[dict[str, Any]]:
    """The best path of an original-release search result, one step per level: prompt, query, answer, evaluation.

    ``BeamSearchResult`` is a named tuple ``(terminal_node, cum_reward, tree, trace)``; the terminal node's
    ``state`` lists one ``SubResult(system_prompt, in_context_examples, query, output, evaluation)`` per level.
    Returns ``[]`` for objects of another shape.
    """
    if pickled_class(obj) != _SEARCH_RESULT or not obj.pickle_args:
        return []
    terminal = obj.pickle_args[0]
    steps = terminal.pickle_state.get("state") if isinstance(terminal, PickledObject) and isinstance(
        terminal.pickle_state, dict) else None
    path = []
    for step in steps or []:
        if pickled_class(step) != _SUB_RESULT or len(step.pickle_args) < 5:
            continue
        prompt, _examples, query, output, evaluation = step.pickle_args[:5]
        path.append({"Prompt": prompt, "query": query, "answer": output, "Evaluation of the prompt": evaluation})
    return path


def _sub_results(obj: Any) -> Iterator[PickledObject]:
    for value in walk(obj):
        if pickled_class(value) == _SUB_RESULT:
            yield value


def extract_prompts(obj: Any) -> list[str]:
    """The distinct system prompts in an unpickled DRPO search result: the best path's, level by level, then every
    other prompt the search evaluated, in the order met walking the tree.

    In the original release each ``SubResult`` named tuple's first field is the system prompt used at that step
    (then the in-context examples, the query, the answer and the per-aspect evaluation); see :func:`best_path`.
    Objects of another shape fall back to strings under a ``system_prompt``/``prompt`` key or attribute.
    """
    prompts: list[str] = []
    seen: set[str] = set()

    def add(text: Any) -> None:
        if isinstance(text, str) and text.strip() and text not in seen:
            seen.add(text)
            prompts.append(text)

    for step in best_path(obj):
        add(step["Prompt"])
    for result in _sub_results(obj):
        if result.pickle_args:
            add(result.pickle_args[0])
        elif isinstance(result.pickle_state, dict):
            add(result.pickle_state.get("system_prompt"))
    if prompts:
        return prompts
    for value in walk(obj):
        if isinstance(value, dict):
            for key in ("system_prompt", "prompt", "Prompt"):
                add(value.get(key))
        elif isinstance(value, PickledObject) and isinstance(value.pickle_state, dict):
            for key in ("system_prompt", "prompt"):
                add(value.pickle_state.get(key))
    return prompts
