"""Live transcription: OpenAI's Realtime API in transcription mode, over a WebSocket.

`audio` turns the client's audio (24 kHz PCM, G.711) into 16 kHz samples, `turns` finds where
speech starts and stops, `captions` keeps partial text append-only, `protocol` reads client
events and writes server events (GA and Beta shapes), and `session` runs one session on the
model's scheduler. The WebSocket route is `api/realtime.py`.
"""
