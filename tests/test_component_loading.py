"""The Langflow component files load the way Langflow loads them, and keep the documented API.

No bridge needed: these tests only read and build the component files.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

import lfx  # the `langflow` extra: a missing lfx fails collection, never skips
import pytest

from tests.langflow_support import (
    COMPONENT_DIR,
    COMPONENTS,
    COMPONENTS_PATH,
    LFX_WARNING_FILTERS,
    ROOT,
    component_source,
    lfx_config_dir,
)

pytestmark = [pytest.mark.langflow, *(pytest.mark.filterwarnings(f) for f in LFX_WARNING_FILTERS)]

# Output name -> type Langflow shows for it ("JSON" is how lfx 1.13 names Data).
EXPECTED_OUTPUTS = {
    "send": {"text": "Message", "stored_message": "Message"},
    "listen": {
        "session_id": "Message",
        "message_content": "Message",
        "chat_history": "JSON",
        "history_text": "Message",
    },
    "chat_template": {"text": "Message"},
    "get_session_messages": {"text": "Message", "data": "JSON"},
    "get_last_session": {"text": "Message"},
    "stream": {"text": "Message"},
}

# The documented components' input names and defaults (shared/reference/ and the Langflow
# Streamlit pages). Saved tweaks address inputs by these names.
DOCUMENTED_INPUTS: dict[str, dict[str, Any]] = {
    "send": {
        "session_id": "",
        "role": "ai",
        "message": "",
        "tweaks": {},
        "port": 7881,
        "hostname": "localhost",
        "rerun": True,
    },
    "listen": {
        "timeout": 120,
        "welcome_msg": "Welcome!",
        # The documented default was "Enter you message" (a typo); only this text changed.
        "input_msg": "Enter your message",
        "write_speed": 0.2,
        "ai_avatar": "🤖",
        "user_avatar": "",
        "port": 7881,
        "hostname": "localhost",
    },
    "chat_template": {
        "welcome_msg": None,
        "input_msg": None,
        "write_speed": 0.2,
        "ai_avatar": "🤖",
        "user_avatar": "",
    },
    "get_session_messages": {"session_id": None, "limit": 10},
    "get_last_session": {},
    "stream": {"session_id": "", "role": "ai"},
}

SHARED_SOURCE = COMPONENTS_PATH / "__shared_helpers__.py"  # the one source of the helpers
GENERATOR = ROOT / "scripts" / "gen_components.py"


def load_generator() -> Any:
    """scripts/gen_components.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_components", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_template(stem: str) -> tuple[str, dict[str, Any]]:
    """What Langflow does with a node's code: `build_component` on the file's source."""
    lfx_config_dir()
    from lfx.custom.utils import build_component

    return build_component({"code": component_source(stem), "output_types": []})


@pytest.mark.parametrize("stem", sorted(COMPONENTS))
def test_each_file_is_accepted_by_langflows_builder(stem: str) -> None:
    name, template = build_template(stem)

    assert name == COMPONENTS[stem]
    outputs = {o["name"]: o["types"] for o in template["outputs"]}
    assert outputs == {k: [v] for k, v in EXPECTED_OUTPUTS[stem].items()}
    # Every output talks to a live service: a cached output would skip the call next run.
    assert all(o["cache"] is False for o in template["outputs"]), template["outputs"]
    assert template["template"]["code"]["value"] == component_source(stem)
    fields = template["template"]
    for advanced in ("api_key", "base_url", "port", "hostname"):
        assert fields[advanced]["advanced"] is True, advanced
    assert fields["api_key"]["password"] is True


@pytest.mark.parametrize("stem", sorted(COMPONENTS))
def test_documented_input_names_and_defaults_are_kept(stem: str) -> None:
    _, template = build_template(stem)
    fields = template["template"]

    for input_name, default in DOCUMENTED_INPUTS[stem].items():
        assert input_name in fields, f"{stem}: documented input {input_name!r} is missing"
        if default is not None:
            assert fields[input_name]["value"] == default, (stem, input_name)
    if "role" in fields:
        assert fields["role"]["options"] == ["ai", "user"]


def test_the_folder_loads_through_langflows_components_path_loaders() -> None:
    """The three loaders that walk LANGFLOW_COMPONENTS_PATH find exactly the six components:
    not the shared helpers' source at the top of the folder, and with no errors."""
    lfx_config_dir()
    from lfx.custom.directory_reader import DirectoryReader
    from lfx.custom.utils import build_custom_components, create_component_template
    from lfx.extension.loader import discover_inline_bundles
    from lfx.interface.components import aget_component_metadata

    # The inline-bundle loader (Langflow 1.13 palette): subfolder = bundle, files imported. A
    # folder it cannot take (e.g. `_shared/`) comes back as an error without a bundle name.
    results = discover_inline_bundles([COMPONENTS_PATH])
    assert [(r.errors, r.warnings) for r in results] == [([], [])] * len(results), results
    assert [r.bundle for r in results] == ["streamlit_bridge"]
    (bundle,) = results
    assert sorted(c.class_name for c in bundle.components) == sorted(COMPONENTS.values())
    for loaded in bundle.components:
        component_template, _ = create_component_template(component_extractor=loaded.klass())
        assert component_template["outputs"], loaded.class_name

    # The legacy custom-components loader: reads every .py up to two levels down whose name
    # does not start with "__", and builds each from its source text.
    read = sorted(Path(f) for f in DirectoryReader(str(COMPONENTS_PATH)).get_files())
    assert read == sorted(COMPONENT_DIR / f"{stem}.py" for stem in COMPONENTS)
    legacy = build_custom_components([str(COMPONENTS_PATH)])
    assert list(legacy) == ["streamlit_bridge"]
    assert sorted(legacy["streamlit_bridge"]) == sorted(COMPONENTS.values())

    # The lazy loader (LANGFLOW_LAZY_LOAD_COMPONENTS): category folders, then their files.
    lazy = asyncio.run(aget_component_metadata([str(COMPONENTS_PATH)]))["components"]
    assert {category: sorted(names) for category, names in lazy.items() if names} == {
        "streamlit_bridge": sorted(COMPONENTS)
    }


def test_names_are_unique_and_clash_with_no_built_in_component() -> None:
    index_path = Path(lfx.__file__).parent / "_assets" / "component_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    built_in = {name for _category, components in index["entries"] for name in components}
    assert "Listen" in built_in  # the clash that made unique names necessary

    names = [build_template(stem)[0] for stem in COMPONENTS]
    assert len(set(names)) == len(names)
    assert not set(names) & built_in


def test_the_component_files_equal_the_generators_output() -> None:
    """Each file must be self-contained, so the shared helpers are copied into it: by
    scripts/gen_components.py (`make components`) from their one source, never by hand."""
    generator = load_generator()
    expected = generator.expected_files()

    assert sorted(expected) == sorted(COMPONENT_DIR / f"{stem}.py" for stem in COMPONENTS)
    for path, text in expected.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} differs from what scripts/gen_components.py writes: edit "
            f"{SHARED_SOURCE.name} (not a copy) and run `make components`; "
            "`python scripts/gen_components.py --check` shows the diff"
        )
        assert "async def _bridge_request" in text and "*_BRIDGE_CONNECTION_INPUTS" in text


def test_the_generator_finds_a_drifted_copy_and_rewrites_it(tmp_path: Path) -> None:
    """--check exits 1 and names the file whose copy was edited by hand; a run restores it and
    writes an edit of the one source into every file."""
    folder = tmp_path / "langflow_component"
    shutil.copytree(COMPONENTS_PATH, folder, ignore=shutil.ignore_patterns("__pycache__"))
    generator = load_generator()
    check = ["--check", "--path", str(folder)]
    listen = folder / COMPONENT_DIR.name / "listen.py"
    source = folder / SHARED_SOURCE.name
    original = listen.read_text(encoding="utf-8")

    assert generator.main(check) == 0
    listen.write_text(original.replace("_BRIDGE_TIMEOUT = 10.0", "_BRIDGE_TIMEOUT = 30.0"))
    assert generator.main(check) == 1
    assert generator.main(["--path", str(folder)]) == 0
    assert listen.read_text(encoding="utf-8") == original
    assert generator.main(check) == 0

    source.write_text(
        source.read_text(encoding="utf-8").replace(
            "_BRIDGE_TIMEOUT = 10.0", "_BRIDGE_TIMEOUT = 9.0"
        )
    )
    assert generator.main(check) == 1
    assert generator.main(["--path", str(folder)]) == 0
    for stem in COMPONENTS:
        text = (folder / COMPONENT_DIR.name / f"{stem}.py").read_text(encoding="utf-8")
        assert "_BRIDGE_TIMEOUT = 9.0" in text and "_BRIDGE_TIMEOUT = 10.0" not in text


@pytest.mark.parametrize("stem", sorted(COMPONENTS))
def test_files_follow_the_rules_of_langflows_rebuild(stem: str) -> None:
    """Langflow keeps only imports, assignments, functions and classes of a node's file."""
    tree = ast.parse(component_source(stem))
    allowed = (
        ast.Import,
        ast.ImportFrom,
        ast.Assign,
        ast.AnnAssign,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
    )
    for i, node in enumerate(tree.body):
        is_docstring = i == 0 and isinstance(node, ast.Expr)
        assert is_docstring or isinstance(node, allowed), (
            f"{stem}.py line {node.lineno}: a module-level {type(node).__name__} is dropped by "
            "Langflow's rebuild"
        )
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{stem}.py line {node.lineno}: relative import"
        modules = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        for module in modules:
            top = module.split(".")[0]
            assert top not in {"bridge", "streamlit_client", "langflow_component", "langflow"}, (
                f"{stem}.py imports {module}: components share only the HTTP contract and the "
                "lfx API"
            )
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == [COMPONENTS[stem]]
    assert all(isinstance(base, ast.Name) for base in classes[0].bases)
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in ast.walk(tree):
        if isinstance(node, definitions) and not node.name.startswith("_"):
            assert ast.get_docstring(node), f"{stem}.py: {node.name} has no docstring"


def test_nothing_but_components_in_the_folder() -> None:
    """Langflow imports every .py under the folder at startup: tests must live elsewhere, and
    next to the category folder there is only the helpers' source (a name Langflow skips)."""
    top = sorted(p.name for p in COMPONENTS_PATH.iterdir() if p.name != "__pycache__")
    assert top == sorted([SHARED_SOURCE.name, COMPONENT_DIR.name])
    python_files = sorted(p.name for p in COMPONENT_DIR.rglob("*.py"))
    assert python_files == sorted([*(f"{stem}.py" for stem in COMPONENTS), "__init__.py"])
    init_source = (COMPONENT_DIR / "__init__.py").read_text(encoding="utf-8")
    assert all(isinstance(n, ast.Expr) for n in ast.parse(init_source).body)
    # The category folder name must be lowercase snake_case for the loader.
    assert re.fullmatch(r"[a-z][a-z0-9_]{1,63}", COMPONENT_DIR.name)
