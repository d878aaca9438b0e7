"""qbq: grade scanned student answers question by question with an OpenAI vision model."""

__version__ = "0.1.0"
