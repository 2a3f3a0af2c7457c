"""Speech-to-text engines: audio conversion, VAD, turn detection and Whisper."""
