"""What machine a benchmark ran on, in one line for docs/benchmarks.md."""

import os
import platform

from nemo_reason.backend.peak import cpu_model


def describe(threads: bool = False, load: bool = False) -> str:
    import torch

    parts = [cpu_model(), f"{os.cpu_count()} cores"]
    if load and hasattr(os, "getloadavg"):
        parts[-1] += f" (load average {os.getloadavg()[0]:.1f} at the end)"
    if threads:
        parts.append(f"{torch.get_num_threads()} torch thread(s)")
    parts += [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    return ", ".join(parts)


def append_to_section(doc, section: str, block: str) -> None:
    """Append ``block`` (a dated ``###`` subsection) at the end of ``section`` (its ``## `` heading) in
    ``doc``, before the next ``## `` heading; the section is started at the end of the file when absent."""
    text = doc.read_text()
    start = text.find(section)
    if start < 0:
        doc.write_text(text.rstrip("\n") + f"\n\n{section}\n\n{block.rstrip(chr(10))}\n")
        return
    nxt = text.find("\n## ", start + len(section))
    end = len(text) if nxt < 0 else nxt + 1
    rest = text[end:]
    doc.write_text(text[:end].rstrip("\n") + f"\n\n{block.rstrip(chr(10))}\n" + ("\n" + rest if rest else ""))
