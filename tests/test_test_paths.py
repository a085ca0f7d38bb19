"""No test reads a path outside the repository, except through tests/shared_refs.py.

A fresh clone has nothing beside it, so a test that reaches for ``../shared``, an absolute path on the machine
it was written on, or the home folder passes there and fails everywhere else. This test reads the source of
every test file and names each such reach, with the line. The checks are on the syntax tree:

* an absolute path, ``..``, ``~`` or a ``shared`` folder given to ``Path``/``open``/``os.path``/``joinpath``
  or joined with ``/``;
* any literal under ``/work/`` or a home folder (``/home/…``, ``/Users/…``, ``/root/…``);
* climbing above the repository from ``__file__`` (``parents[2]``, ``parents[1].parent``, ``.parent`` × 3,
  ``os.path.dirname`` × 3 …), also through a module-level name that holds such a path;
* ``Path.home()``, ``expanduser``.
"""
from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EXEMPT = {
    "tests/shared_refs.py": "the one way to reach ../shared",
    "tests/test_test_paths.py": "this file: its examples are ways out",
}
# Absolute paths a test may name: what it only writes, a system program it runs, or the kernel's view of the
# test's own process. Never an input file.
ALLOWED_ABSOLUTE: dict[str, str] = {
    "/proc/self/maps": "the kernel's list of this process's memory maps (tests/test_models.py: no file is mapped)",
}
PATH_CALLS = {"Path", "PurePath", "PosixPath", "PurePosixPath", "open", "joinpath", "join", "glob", "iglob",
              "listdir", "scandir", "walk", "exists", "isfile", "isdir", "abspath", "realpath", "normpath"}
HOME_PREFIXES = ("/work/", "/home/", "/Users/", "/root/")
HELP = "read files in the repository, or shared/ through tests/shared_refs.shared_path() in a shared-marked test"


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _path_problem(value: str, anchored: bool) -> str | None:
    """Why a string in a path expression leaves the repository, or None. ``anchored``: the expression starts
    at the repository or the working folder (not at, say, pytest's tmp_path, where '..' stays inside)."""
    if value in ALLOWED_ABSOLUTE:
        return None
    if value.startswith("/"):
        return f"the absolute path {value!r}"
    if value.startswith("~"):
        return f"the home folder ({value!r})"
    parts = PurePosixPath(value).parts
    if anchored and ".." in parts:
        return f"{value!r}, which climbs out with '..'"
    if anchored and "shared" in parts:
        return f"{value!r}, which names the shared folder"
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, depth: int):
        self.depth = depth  # how many .parent steps from __file__ reach the repository root
        self.names: dict[str, int] = {}  # module-level names holding a path N steps above __file__
        self.found: list[tuple[int, str]] = []

    # -------------------------------------------------------- climbing from __file__

    def ups(self, node) -> int | None:
        """How many folders above __file__ this expression is, or None when it is not derived from __file__."""
        if isinstance(node, ast.Name):
            return 0 if node.id == "__file__" else self.names.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            inner = self.ups(node.value)
            return None if inner is None else inner + 1
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
            inner = self.ups(node.value.value)
            index = node.slice
            if inner is None or not (isinstance(index, ast.Constant) and isinstance(index.value, int)):
                return None
            return inner + index.value + 1
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in ("Path", "PurePath", "abspath", "realpath", "fspath", "str") and node.args:
                return self.ups(node.args[0])
            if name == "dirname" and node.args:
                inner = self.ups(node.args[0])
                return None if inner is None else inner + 1
            if name in ("resolve", "absolute") and isinstance(node.func, ast.Attribute):
                return self.ups(node.func.value)
        return None

    def check_climb(self, node) -> None:
        ups = self.ups(node)
        if ups is not None and ups > self.depth:
            self.found.append((node.lineno, f"climbs {ups - self.depth} folder(s) above the repository "
                                            f"from __file__ ({ast.unparse(node)})"))

    # -------------------------------------------------------- visiting

    def visit_Module(self, node: ast.Module) -> None:
        for statement in node.body:  # module-level names first, so later uses of ROOT.parent are caught
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                    and isinstance(statement.targets[0], ast.Name):
                ups = self.ups(statement.value)
                if ups is not None:
                    self.names[statement.targets[0].id] = ups
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "parent":
            self.check_climb(node)
        if node.attr == "pardir":
            self.found.append((node.lineno, "climbs out with os.pardir"))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.check_climb(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        if name == "dirname":
            self.check_climb(node)
        if name in ("home", "expanduser"):
            self.found.append((node.lineno, f"reads the home folder ({ast.unparse(node)})"))
        if name in PATH_CALLS:
            anchored = bool(node.args) and self.anchored(node.args[0])
            for arg in node.args:
                self.check_literal(arg, anchored)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Div):
            anchored = self.anchored(node.left)
            self.check_literal(node.left, anchored)
            self.check_literal(node.right, anchored)
        self.generic_visit(node)

    def anchored(self, node) -> bool:
        """Whether a path expression starts at the repository (__file__), the working folder or a literal."""
        while True:
            if isinstance(node, ast.BinOp):
                node = node.left
            elif isinstance(node, ast.Call) and _call_name(node) in ("cwd", "getcwd"):
                return True
            elif isinstance(node, ast.Call) and _call_name(node) in PATH_CALLS and node.args:
                node = node.args[0]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                node = node.func.value
            else:
                return isinstance(node, ast.Constant) or self.ups(node) is not None

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value.startswith(HOME_PREFIXES) \
                and node.value not in ALLOWED_ABSOLUTE:
            self.found.append((node.lineno, f"names {node.value!r}, a folder of one machine"))

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == "pardir":
            self.found.append((node.lineno, "climbs out with os.pardir"))

    def check_literal(self, node, anchored: bool) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            problem = _path_problem(node.value, anchored)
            if problem:
                self.found.append((node.lineno, f"reads {problem}"))


def ways_out(source: str, relative: str) -> list[str]:
    """Each place where the test file ``relative`` (e.g. "tests/test_x.py") reaches outside the repository."""
    scanner = _Scanner(depth=len(PurePosixPath(relative).parts))
    scanner.visit(ast.parse(source, filename=relative))
    return [f"{relative}:{line}: {what}" for line, what in sorted(set(scanner.found))]


def test_no_test_file_reaches_outside_the_repository_but_through_shared_refs():
    files = sorted(p for p in TESTS.rglob("*.py") if p.relative_to(REPO).as_posix() not in EXEMPT)
    assert len(files) > 40
    found = [way for path in files
             for way in ways_out(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())]
    assert not found, f"tests reaching outside the repository ({HELP}):\n" + "\n".join(found)


# Each of these reaches outside the repository (the first four are lines the suite held before this guard).
WAYS_OUT = [
    'KOHYA_PRESETS = Path("/work/shared/fixtures/kohya_presets")',
    'SHARED = Path(__file__).resolve().parents[1].parent / "shared"',
    'SEED_TSV = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "seed-settings.tsv"',
    'X = next((d for d in (Path(__file__).parent / "fixtures", SHARED_FIXTURES) if d.is_dir()), None)\n'
    'SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "kohya_presets"',
    'ROOT = Path(__file__).resolve().parents[1]\nDATA = ROOT.parent / "data"',
    'OUTSIDE = Path(__file__).parents[2]',
    'OUTSIDE = Path(__file__).parent.parent.parent',
    'import os\nOUTSIDE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))',
    'def test_x(tmp_path):\n    return open("/etc/hostname").read()',
    'ROOT = Path(__file__).resolve().parents[1]\nTSV = ROOT / "../shared/reference/seed-settings.tsv"',
    'ROOT = Path(__file__).resolve().parents[1]\nREF = ROOT / ".." / "reference"',
    'import os\nREF = os.path.join(os.getcwd(), os.pardir, "shared")',
    'MODELS = Path.home() / "models"',
    'MODELS = Path("~/models").expanduser()',
    'CONFIG = {"path": "/home/someone/lora.json"}',
    'SHARED = Path.cwd() / "shared"',
    'SCREENSHOT = Path("/tmp/loom-browser-test.png")',
]
# … and none of these does.
STAYS_IN = [
    'PROJECT_ROOT = Path(__file__).resolve().parents[1]\nFIXTURES = PROJECT_ROOT / "tests" / "fixtures"',
    'FIXTURES = Path(__file__).parent / "fixtures" / "kohya"',
    'ROOT = Path(__file__).parent.parent\nREADME = ROOT / "README.md"',
    'def test_x(tmp_path):\n    (tmp_path / "out").mkdir(parents=True)\n    return tmp_path.parent',
    'VALUES = {"train_data_dir": "/data/cats", "output_dir": "/out"}',
    'assert safe_file_stem("  ../../etc/passwd ") == "_.._etc_passwd"',
    'def test_x(tmp_path):\n    return str(tmp_path / "sub" / ".." / "out"), tmp_path / "shared"',
    'from .shared_refs import shared_path\nTSV = shared_path("reference", "seed-settings.tsv")',
]


@pytest.mark.parametrize("source", WAYS_OUT)
def test_the_guard_names_each_way_out(source):
    assert ways_out(source, "tests/test_example.py"), source


@pytest.mark.parametrize("source", STAYS_IN)
def test_the_guard_lets_paths_inside_the_repository_pass(source):
    assert ways_out(source, "tests/test_example.py") == []


def test_the_guard_counts_folders_from_where_the_file_is():
    source = 'UP = Path(__file__).parent.parent.parent'
    assert ways_out(source, "tests/test_example.py")  # tests/ → repo → outside
    assert ways_out(source, "tests/offline/helper.py") == []  # offline/ → tests/ → repo
