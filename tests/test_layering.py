"""The project's layers point one way: core library (trainer/) <- data building (scripts/dataset_building/)
<- recipes (scripts/recipes/: tiny twins, embedded defaults) <- command-line tools (eval/, infer/, the rest
of scripts/). A module imports its own layer or lower ones, never a higher one; imports of the project's
own modules sit at the top of the file unless they say why not."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parent.parent
LAYERS = [  # lowest first
    ('core', ('trainer',)),
    ('data building', ('scripts.dataset_building',)),
    ('recipes', ('scripts.recipes',)),
    ('tools', ('eval', 'infer', 'scripts')),
]
PROJECT = ('trainer', 'eval', 'infer', 'scripts')


def layer_of(module: str) -> int:
    """Index in LAYERS of a dotted module name (the longest matching prefix wins)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + '.')) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, module
    return best


def project_modules() -> List[Tuple[str, Path]]:
    out = []
    for top in PROJECT:
        for path in sorted((REPO / top).rglob('*.py')):
            parts = path.relative_to(REPO).with_suffix('').parts
            out.append(('.'.join(p for p in parts if p != '__init__'), path))
    return out


def project_imports(path: Path) -> List[Tuple[str, int, bool]]:
    """(imported project module, line, whether inside a function) for every import of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] + [f'{child.module}.{a.name}' for a in child.names]
            for name in names:
                if name.split('.')[0] in PROJECT:
                    found.append((name, child.lineno, in_function))
            visit(child, inner)
    visit(tree, False)
    return found


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, path in project_modules():
        mine = layer_of(module)
        for name, line, _ in project_imports(path):
            if layer_of(name) > mine:
                upward.append(f'{path.relative_to(REPO)}:{line} ({LAYERS[mine][0]}) imports {name} '
                              f'({LAYERS[layer_of(name)][0]})')
    assert not upward, '\n'.join(upward)


def test_the_layer_test_sees_an_upward_import(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('def f():\n    from scripts.recipes.tiny_models import tiny_model_dir\n')
    [(name, line, inside)] = [i for i in project_imports(bad) if i[0].endswith('tiny_models')]
    assert layer_of(name) > layer_of('trainer.rewards') and line == 2 and inside


def test_the_launchers_name_modules_that_exist():
    """The shell launchers call ``python -m MODULE``: every such module is a file of the repository."""
    import re
    for script in list(REPO.glob('*.sh')) + list((REPO / 'scripts').glob('*.sh')):
        for module in re.findall(r'python -m ((?:trainer|eval|infer|scripts)[\w.]*)', script.read_text()):
            path = REPO / (module.replace('.', '/') + '.py')
            assert path.is_file() or (REPO / module.replace('.', '/') / '__main__.py').is_file(), (script, module)
