"""``drpo serve``: compiled DRPO programs behind an OpenAI-compatible API (FastAPI + uvicorn, litellm upstream).

``create_app(settings, registry)`` builds the app; ``ProgramRegistry`` loads and hot-reloads the program files;
``BackgroundServer`` runs it on a loopback port in a thread. See ``docs/serve.md``. Needs the ``[serve]`` extra:
``pip install "drpo-dspy[serve]"``.
"""

from drpo_dspy.serve.settings import ProgramSpec, ServeSettings

__all__ = ["BackgroundServer", "ProgramRegistry", "ProgramSpec", "ServeSettings", "create_app"]


def __getattr__(name: str):  # the web stack is imported only when used
    if name == "create_app":
        from drpo_dspy.serve.app import create_app

        return create_app
    if name == "ProgramRegistry":
        from drpo_dspy.serve.programs import ProgramRegistry

        return ProgramRegistry
    if name == "BackgroundServer":
        from drpo_dspy.serve.background import BackgroundServer

        return BackgroundServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
