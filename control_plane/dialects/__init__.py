"""Front doors in other API dialects, translated onto the chat-completions request path.

``responses.py`` (OpenAI's Responses API) and ``messages.py`` (Anthropic's Messages API)
turn a request into a chat-completions request, hand it to the one request path
(routing, fair queue, budgets, records: control_plane/openai/serving.py), and turn the
chat answer, whole or streamed, back into their own wire shapes. ``chat.py`` reads the
chat answer both need.
"""
