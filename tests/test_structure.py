"""The shape of the code base that docs/design.md promises: a layered package without import
cycles (data and shards below the model, the run below the job), short functions, one epoch loop
for the job and the studies, and no pointers to documents the repository does not have."""
import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'tokenformer_vit'


def package_imports():
    """{module: the package modules it imports, at the top or inside functions}; a subpackage (growth/)
    is one module, whose files' imports of each other are its own."""
    graph = {}
    for path in PACKAGE.rglob('*.py'):
        module = path.stem if path.parent == PACKAGE else path.parent.name
        top = 1 if path.parent == PACKAGE else 2  # the relative level that reaches the package
        deps = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == top:
                deps |= {node.module.split('.')[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('tokenformer_vit.'):
                deps.add(node.module.split('.')[1])
    return {module: deps - {module} for module, deps in graph.items()}


def package_functions():
    """(file name, function node) of every function of the package, methods included."""
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE).as_posix(), node


def test_no_function_takes_more_than_10_parameters_but_the_layers_the_model_file_and_the_kernels():
    # a group of settings that travels together is one value (RunConfig, DataConfig, ShardSpec, StepParts)
    exempt = {'pattention.py', 'tokenformer_vit.py', 'triton_pattention.py'}
    long = []
    for name, node in package_functions():
        a = node.args
        params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ('self', 'cls')]
        if len(params) > 10 and name not in exempt:
            long.append(f'{name}:{node.lineno} {node.name} ({len(params)})')
    assert not long, long


def test_below_the_commands_no_function_takes_the_argparse_namespace():
    # flags become frozen values once, in config.py (config.job_config); the commands parse them
    commands = {'config.py', 'cli.py', 'submit.py', 'grow_checkpoint.py', 'timm_script.py', 'triton_pattention.py'}
    takers = []
    for name, node in package_functions():
        a = node.args
        params = a.posonlyargs + a.args + a.kwonlyargs
        namespace = [p.arg for p in params
                     if p.arg == 'args' or 'Namespace' in ast.unparse(p.annotation or ast.Name(''))]
        if namespace and name not in commands and not (name == 'make_shards.py' and node.name == 'main'):
            takers.append(f'{name}:{node.lineno} {node.name}')
    assert not takers, takers
    job_files = (PACKAGE / 'train.py').read_text() + (PACKAGE / 'job.py').read_text()
    assert not re.search(r'\bargs\b|argparse', job_files)


def test_the_package_has_no_import_cycle():
    graph, done, stack = package_imports(), set(), []

    def visit(module):
        if module in stack:
            raise AssertionError('import cycle: ' + ' -> '.join(stack[stack.index(module):] + [module]))
        if module in done:
            return
        stack.append(module)
        for dep in graph.get(module, ()):
            visit(dep)
        stack.pop()
        done.add(module)
    for module in graph:
        visit(module)
    assert 'submit' not in graph['train'] and 'train' in graph['submit']  # the launcher imports the job


def reachable(graph, module):
    """Every package module that importing `module` imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_data_and_shards_sit_below_the_model_and_the_run_below_the_job():
    graph = package_imports()
    model_side = {'tokenformer_vit', 'pattention', 'growth', 'checkpoint', 'run', 'engine'}
    assert {'model', 'plan', 'training', 'state_dict'} & set(graph) == set()  # growth/ is one module here
    for module in ('atomic', 'errors', 'transforms', 'fashion_mnist', 'cifar10', 'make_shards', 'data'):
        assert not reachable(graph, module) & model_side, (module, reachable(graph, module) & model_side)
    assert 'run' in graph['train'] and not reachable(graph, 'run') & {'train', 'config', 'cli', 'submit'}
    assert 'tokenformer_vit' in graph['checkpoint'] and 'growth' not in graph['checkpoint']  # the token schema


def test_no_function_is_longer_than_60_lines_but_the_models_init_and_the_job_file_under_350():
    long = []
    for path in [*PACKAGE.glob('*.py'), REPO / 'train_imagenet.py', *(REPO / 'benchmarks').glob('*.py')]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60 and not (path.name == 'tokenformer_vit.py' and node.name == '__init__'):
                    long.append(f'{path.name}:{node.lineno} {node.name} ({lines} lines)')
    assert not long, long
    assert len((PACKAGE / 'train.py').read_text().splitlines()) < 350


def test_the_repository_has_one_epoch_loop_and_the_job_and_studies_use_it():
    # an epoch loop: a `for` whose body both positions the data (set_epoch) and trains (train_epoch,
    # train_one_epoch): only run.train_epochs may hold one
    loops = []
    for path in [*PACKAGE.glob('*.py'), *(REPO / 'benchmarks').glob('*.py'), *(REPO / 'tests').glob('*.py')]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.For):
                calls = {getattr(n.func, 'attr', getattr(n.func, 'id', None)) for n in _own_nodes(node)
                         if isinstance(n, ast.Call)}
                if 'set_epoch' in calls and calls & {'train_epoch', 'train_one_epoch'}:
                    loops.append(f'{path.relative_to(REPO)}:{node.lineno}')
    assert loops == ['tokenformer_vit/run.py:' + str(_line_of('run.py', 'for epoch in range('))], loops
    for user in ('train.py', '../benchmarks/growth_experiment.py', '../benchmarks/growth_loss.py',
                 '../benchmarks/study_data.py'):
        assert 'train_epochs(' in (PACKAGE / user).read_text(), user


def _own_nodes(loop):
    """The nodes of a loop's body that belong to it, not to a loop nested in it."""
    todo = list(loop.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.For, ast.While)):
            todo.extend(ast.iter_child_nodes(node))


def _line_of(name, text):
    return next(i for i, line in enumerate((PACKAGE / name).read_text().splitlines(), 1) if text in line)


def test_no_benchmark_trains_with_an_optimizer_or_loop_of_its_own():
    # time single steps on random data, report no accuracy
    speed_only = {'bench_model.py', 'bench_pattention.py', 'profile_step.py', 'bench_compile_growth.py'}
    trainers = []
    for path in sorted((REPO / 'benchmarks').glob('*.py')):
        text = path.read_text()
        if path.name in speed_only:
            continue
        assert not re.search(r'torch\.optim\.|create_optimizer|\.step\(\)', text), f'{path.name} steps an optimizer'
        if re.search(r'\btrain_epochs?\(|\btrain_and_test\(', text):
            trainers.append(path.name)
    assert {'growth_experiment.py', 'growth_loss.py', 'bench_init.py'} <= set(trainers), trainers


def test_nothing_outside_docs_points_to_a_design_document_the_repository_lacks():
    pattern = 'DESIGN' + ' §'  # split, so that this file does not match itself
    found = subprocess.run(['git', 'grep', '-n', pattern, '--', ':!docs'], cwd=REPO, capture_output=True,
                           text=True).stdout
    assert found == '', found


def test_every_results_file_the_docs_name_is_committed():
    import fnmatch
    tracked = set(subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True).stdout.split())
    missing = []
    for doc in [REPO / 'README.md', *(REPO / 'docs').glob('*.md')]:
        for name in re.findall(r'benchmarks/results/[\w.\-{},*]+', doc.read_text()):
            stem, _, exts = name.rstrip('.,').partition('{')
            rest = exts.partition('}')
            names = [stem + e + rest[2] for e in rest[0].split(',')] if exts else [stem]
            missing += [f'{doc.name}: {n}' for n in names  # a file, or a folder of committed files
                        if not fnmatch.filter(tracked, n) and not fnmatch.filter(tracked, n.rstrip('/') + '/*')]
    assert not missing, missing


def test_the_readme_is_a_newcomers_page_of_at_most_200_lines():
    text = (REPO / 'README.md').read_text()
    assert len(text.splitlines()) <= 200
    for doc in re.findall(r'\]\((docs/[\w.\-]+)\)', text):
        assert (REPO / doc).is_file(), doc


def test_no_module_reads_the_environment_at_import_or_keeps_a_global_flag():
    # environment variables are read when used (a test or a launcher may set them later); state that
    # changes belongs to an object, not to a module-level flag that `global` rebinds
    found = []
    for path in sorted(PACKAGE.rglob('*.py')):
        tree = ast.parse(path.read_text())
        for stmt in tree.body:  # the module's own statements, its docstring aside
            docstring = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)) and not docstring \
                    and re.search(r'os\.environ|getenv', ast.unparse(stmt)):
                found.append(f'{path.name}:{stmt.lineno} reads the environment at import')
        found += [f'{path.name}:{n.lineno} global {", ".join(n.names)}' for n in ast.walk(tree)
                  if isinstance(n, ast.Global)]
    assert not found, found
