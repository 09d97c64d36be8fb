"""Write the shared helpers into every Langflow component file (`make components`).

Langflow rebuilds each node from its own file's source, so a component file cannot import a
shared module: each one carries its own copy of the shared helpers. The copy is written once,
in langflow_component/__shared_helpers__.py between the lines `# --- begin shared helpers` and
`# --- end shared helpers`; this script writes it into the region between the same two markers
of every component file (langflow_component/<category>/*.py) and leaves the rest of each file
alone. A component file imports what the helpers use itself (the script checks that it does).

    python scripts/gen_components.py           # rewrite the files that differ
    python scripts/gen_components.py --check   # write nothing; exit 1 and show what differs

tests/test_component_loading.py fails when a committed file differs from what this writes.
Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS_PATH = ROOT / "langflow_component"  # what LANGFLOW_COMPONENTS_PATH points at
SOURCE_NAME = "__shared_helpers__.py"  # in COMPONENTS_PATH; "__" keeps Langflow from loading it

BEGIN = "# --- begin shared helpers"
END = "# --- end shared helpers"
REGION_HEAD = f"""\
{BEGIN}: generated from langflow_component/{SOURCE_NAME} ---
# Do not edit this region: edit that file, then run `make components` (scripts/gen_components.py).
# Langflow rebuilds each node from its own file's source, so every component file carries a copy.
"""
REGION_TAIL = f"{END} ---\n"
DIFF_LINES = 40  # lines of diff shown per differing file with --check


class GenerationError(Exception):
    """A source or component file the generator cannot work with; the message says why."""


def _region(lines: list[str], where: str) -> tuple[int, int]:
    """Indexes of the begin and end marker lines; exactly one of each, begin first."""
    begins = [i for i, line in enumerate(lines) if line.startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.startswith(END)]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise GenerationError(
            f"{where}: needs one line starting {BEGIN!r} and, after it, one starting {END!r} "
            f"(found {len(begins)} and {len(ends)}). Put the two markers where the shared "
            "helpers go (after the imports), then run the generator."
        )
    return begins[0], ends[0]


def _imports(tree: ast.Module) -> set[str]:
    """The module-level imports of a file, as `import x.y` / `from x import y` statements."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(f"import {alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.update(f"from {node.module} import {alias.name}" for alias in node.names)
    return found


def _parse(text: str, where: str) -> ast.Module:
    try:
        return ast.parse(text, filename=where)
    except SyntaxError as exc:
        raise GenerationError(f"{where}: not valid Python ({exc})") from None


def shared_block(source: Path) -> tuple[str, set[str]]:
    """The block to copy (without markers or edge blank lines) and the imports it needs."""
    text = source.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    begin, end = _region(lines, str(source))
    block = "".join(lines[begin + 1 : end]).strip("\n") + "\n"
    if _imports(_parse(block, f"{source} (shared block)")):
        raise GenerationError(
            f"{source}: put the imports above {BEGIN!r}: a component file keeps its imports at "
            "its top, and the generator checks it has the ones the block needs"
        )
    return block, _imports(_parse(text, str(source)))


def render(component: str, block: str, needs: set[str], where: str) -> str:
    """The component file's text with its generated region rewritten from `block`."""
    lines = component.splitlines(keepends=True)
    begin, end = _region(lines, where)
    text = "".join(
        [*lines[:begin], REGION_HEAD, "\n", block, "\n\n", REGION_TAIL, *lines[end + 1 :]]
    )
    missing = sorted(needs - _imports(_parse(text, where)))
    if missing:
        raise GenerationError(
            f"{where}: the shared helpers need these imports at the top of the file: "
            + "; ".join(missing)
        )
    return text


def component_files(components_path: Path) -> list[Path]:
    """Every component file: the .py files of the category folders, but none named `__*`."""
    files = sorted(
        path
        for path in components_path.glob("*/*.py")
        if not path.name.startswith("__") and not path.parent.name.startswith((".", "_"))
    )
    if not files:
        raise GenerationError(f"{components_path}: no component files in its category folders")
    return files


def expected_files(components_path: Path = COMPONENTS_PATH) -> dict[Path, str]:
    """Each component file and the text the generator writes for it."""
    block, needs = shared_block(components_path / SOURCE_NAME)
    return {
        path: render(path.read_text(encoding="utf-8"), block, needs, _shown(path))
        for path in component_files(components_path)
    }


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _diff(path: Path, old: str, new: str) -> list[str]:
    name = _shown(path)
    lines = list(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            f"{name} (committed)",
            f"{name} (generated)",
            n=1,
        )
    )
    shown = lines[:DIFF_LINES]
    if len(lines) > DIFF_LINES:
        shown.append(f"... ({len(lines) - DIFF_LINES} more diff lines)\n")
    return shown


def main(argv: list[str] | None = None) -> int:
    """Rewrite the component files (or, with --check, report the ones that differ)."""
    parser = argparse.ArgumentParser(
        description="Write the shared helpers into every Langflow component file."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and show a diff when a file differs from the output",
    )
    parser.add_argument(
        "--path",
        type=Path,
        default=COMPONENTS_PATH,
        help="the folder LANGFLOW_COMPONENTS_PATH points at (default: langflow_component/)",
    )
    args = parser.parse_args(argv)
    try:
        expected = expected_files(args.path)
    except GenerationError as exc:
        print(f"gen_components: {exc}", file=sys.stderr)
        return 2
    differ = {
        path: text for path, text in expected.items() if path.read_text(encoding="utf-8") != text
    }
    if args.check:
        for path, text in differ.items():
            sys.stdout.writelines(_diff(path, path.read_text(encoding="utf-8"), text))
        if differ:
            print(
                f"{len(differ)} of {len(expected)} component files differ from the generator's "
                f"output: {', '.join(_shown(p) for p in differ)}. Edit "
                f"langflow_component/{SOURCE_NAME} (not a copy), then run `make components`."
            )
            return 1
        print(f"{len(expected)} component files match langflow_component/{SOURCE_NAME}.")
        return 0
    for path, text in differ.items():
        with path.open("w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        print(f"wrote {_shown(path)}")
    print(f"{len(differ)} of {len(expected)} component files rewritten.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
