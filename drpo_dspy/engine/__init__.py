"""The embedded inference engine: GGUF models run in-process by llama.cpp (through llama-cpp-python).

``models`` names the embedded models and finds their files; ``workers`` decodes on parallel single-core contexts;
``prefix_cache`` restores evaluated prompt prefixes; ``sampling`` builds the sampler chain and the fast grammar
check; ``completion_text`` assembles text as ``create_completion`` does; ``stream`` hands it over token by token;
``options`` reads the engine's switches from the environment, once. The litellm provider that serves it,
``embedded/<name>``, is ``drpo_dspy.clients.embedded``.
"""
