"""Documentation generated from the code, so it can't drift from it."""

from __future__ import annotations

from pydantic_core import PydanticUndefined

from .config import Settings

AUTO_DEFAULTS = {
    "batch_size": "16 (GPU), 6 (CPU)",
    "beam_size": "5 (GPU), 1 (CPU)",
    "max_uploads_in_memory_mb": "1024",
}


def env_table() -> str:
    """A Markdown table of every environment variable, its default and its meaning."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            factory_defaults = {
                "cache_dir": "`~/.cache/asrd`",
                "cpu_threads": "all cores",
                "model_aliases": "OpenAI's and Groq's names",
            }
            default = factory_defaults.get(name, "empty")
        elif name in AUTO_DEFAULTS:
            default = AUTO_DEFAULTS[name]
        elif field.default is PydanticUndefined or field.default is None:
            default = "unset"
        elif isinstance(field.default, bool):
            default = f"`{str(field.default).lower()}`"
        else:
            default = f"`{field.default}`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {default} | {description} |")
    return "\n".join(rows)
