"""The package's layout by concern (docs/architecture.md): imports point one way, and no module of
edlcm_ext imports itself back through a circle. Read from the source (ast), so a new import that
breaks either fails here rather than in a reader's head. Imports under ``if TYPE_CHECKING:`` are
annotations only and are not counted."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edlcm_ext"

# What each concern may import of edlcm_ext (besides itself and the shared helpers of SHARED).
# The loss and its kernels import nothing of the models, the trainer or the evaluator; the models
# nothing but the registry; training uses the loss and the models; evaluation also reads the
# trainer's checkpoints and datasets; the CLI sits on top.
ALLOWED = {
    "ops": set(),
    "fused": {"ops"},
    "loss": {"ops", "fused"},
    "models": set(),
    "training": {"ops", "fused", "loss", "models"},
    "evaluation": {"ops", "fused", "loss", "models", "training"},
    "cli": {"ops", "fused", "loss", "models", "training", "evaluation"},
}
SHARED = {"registry", "devices", "linf_ball", "_C", ""}  # "" is edlcm_ext/__init__ (it loads _C and the public names)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (PACKAGE / Path(*name.split(".")) / "__init__.py").exists() if name else True


def exists(name: str) -> bool:
    path = PACKAGE / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def runtime_imports(path: Path) -> set[str]:
    """Modules of edlcm_ext that ``path`` imports when it runs (relative to edlcm_ext, "" the package)."""
    name, tree = module_name(path), ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "edlcm_ext":
                target = node.module.partition(".")[2]
            else:
                return
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if exists(sub) else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "edlcm_ext":
                    found.add(alias.name.partition(".")[2])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): runtime_imports(path) for path in PACKAGE.rglob("*.py")}


def concern(name: str) -> str:
    return name.split(".")[0] if name else ""


def test_imports_point_one_way_between_concerns():
    wrong = []
    for module, imports in sorted(graph().items()):
        if concern(module) in SHARED or concern(module) == "__main__":
            continue
        for target in sorted(imports):
            allowed = ALLOWED[concern(module)] | SHARED | {concern(module)}
            if concern(target) not in allowed:
                wrong.append(f"edlcm_ext.{module} imports edlcm_ext.{target}")
    assert not wrong, "imports against the layout of docs/architecture.md:\n" + "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_module_imports_itself_back_through_a_circle():
    edges = graph()
    # A module importing its own package's __init__ is not a circle unless that __init__ imports it back.
    cycle = find_cycle(edges)
    assert not cycle, "import circle: " + " -> ".join(f"edlcm_ext.{m}" if m else "edlcm_ext" for m in cycle)


def test_the_circle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_layout_reader_sees_relative_imports_and_skips_annotations(tmp_path):
    assert "loss.regularizer" in graph()["loss.hvp_curvature_loss"]
    assert "loss.hvp_curvature_loss" not in graph()["evaluation.curvature"]  # imported under TYPE_CHECKING only
