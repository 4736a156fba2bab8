"""The package stays layered: lower layers never import higher ones."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "peft_vtg"

# What each part may import from peft_vtg (besides itself). The tuner (vtg_prompt) builds heads into adapters.
ALLOWED = {
    "timeline": set(),
    "files": set(),
    "locks": set(),
    "injection": {"timeline", "vtg_prompt"},  # vtg_prompt only for the config type, under TYPE_CHECKING
    "heads": {"timeline"},
    # Moment-DETR's metrics, standalone like the evaluator they reproduce but for the lowest layer's input checks
    "moment_detr_eval": {"timeline"},
    "metrics": {"timeline", "moment_detr_eval"},
    "data": {"timeline"},
    "vtg_prompt": {"timeline", "files", "injection", "heads"},
    "inference": {"timeline", "heads", "data", "vtg_prompt"},
    "training": {"timeline", "files", "locks", "heads", "data", "metrics", "moment_detr_eval", "vtg_prompt"},
    "submission": {"data", "metrics", "moment_detr_eval"},
    "batch_predict": {"data", "files", "locks", "inference", "submission"},
    "extract": {"cache", "data", "files", "locks", "injection"},
    "hub": {"files", "metrics"},
    "cache": {"timeline", "files", "locks", "injection", "data"},
    "baselines": {"timeline", "heads"},
    "synth": {"timeline", "heads", "data"},
    "demo": {"data", "synth", "training", "vtg_prompt", "metrics"},
}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    parts = set()
    package_depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for peft_vtg/x.py, 1 for peft_vtg/sub/x.py
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - 1  # levels above the module's own package
            if up < package_depth:
                continue  # a sibling inside the same subpackage
            target = (node.module or "").split(".")[0]
            names = [target] if target else [alias.name for alias in node.names]
            parts.update(names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peft_vtg."):
            parts.add(node.module.split(".")[1])
    return parts


def test_lower_layers_do_not_import_higher_ones():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        part = part_of(path)
        if part not in ALLOWED:
            continue
        for imported in imported_parts(path) - {part}:
            if imported not in ALLOWED[part]:
                problems.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not problems, problems
