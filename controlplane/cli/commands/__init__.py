"""The ``banditctl`` subcommands, one module each."""


def split_names(text: str) -> list[str]:
    """A comma-separated option's names, stripped, empty ones left out."""
    return [s.strip() for s in text.split(",") if s.strip()]
