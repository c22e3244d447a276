"""Ahead-of-time compilation of every registered Triton kernel for each GPU architecture, without a GPU.

Kernel modules in :mod:`fastbert.kernels` describe the variants they launch with :func:`register_aot`;
:func:`check_kernels` compiles each one with ``triton.compile`` for every requested architecture and
reads the resources of the result with the CUDA tools bundled with triton: registers and the stack
frame (``cuobjdump -res-usage``), spill stores/loads (``ptxas -v`` on triton's PTX), shared memory
(triton's metadata and ``cuobjdump``) and tensor-core instructions (``cuobjdump -sass``). From the SASS
it also counts the instructions and tensor-core instructions of the main loop body
(:func:`loop_body`), so a kernel change that adds work to the loop shows without a GPU
(:func:`format_counts`, ``fastbert check-kernels --counts``).

Each kernel module lists the variants its launchers may run on one architecture (the tiles its
autotuner may pick there, which fit that arch's shared memory). A build fails on a compile error, any
spilling or local memory, more shared memory than one block may opt in to, or a dot kernel without a
tensor-core instruction on sm_80 or newer. ``fastbert check-kernels`` prints the table
(:func:`format_report`).

Nothing here imports triton at module import, so kernel modules can register in any process; the
compiling happens in worker processes where ``TRITON_INTERPRET`` is not in effect.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from fastbert.routing import CHECKED_ARCHS, TENSOR_CORE_CAPABILITY, smem_limit

# Turing (T4), A100, consumer Ampere (A10, RTX 30), Ada (L4, L40, RTX 40), H100/H200, B200, RTX 50.
ALL_ARCHS = CHECKED_ARCHS
ARCHS = (80, 90)  # the default of ``fastbert check-kernels``
SMEM_LIMITS = {arch: smem_limit(arch) for arch in ALL_ARCHS}

# mma.sync (sm_80+), wgmma (sm_90) and tcgen05 (sm_100: UTCHMMA, UTCQMMA, ...) tensor-core instructions
_MMA = re.compile(r"\b(?:HMMA|IMMA|BMMA|HGMMA|IGMMA|QGMMA|BGMMA|UTC[A-Z]*MMA)\b")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
# SASS as cuobjdump -sass and nvdisasm print it: "/*0d50*/  @!P3 BRA 0x8c0 ;", "@!P5 BRA `(.L_x_1) ;", ".L_x_1:"
_SASS_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+([^;]*?)\s*;")
_SASS_LABEL = re.compile(r"^\s*([.\w$]+):\s*$")
_SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_BRANCH = re.compile(r"^(?:@\S+\s+)?BRA(?:\.\S+)?\s+(?:.*,\s*)?(?:0x([0-9a-fA-F]+)|`\(([.\w$]+)\))\s*$")


@dataclass(frozen=True)
class AotVariant:
    """One compiled form of a kernel, as the launcher would run it.

    ``signature`` maps every argument of ``kernel`` (a raw ``@triton.jit`` function, not an autotuner)
    to a triton type (``"*fp16"``, ``"*bf16"``, ``"*fp32"``, ``"*i32"``, ``"*i64"``, ``"i32"``, ``"i64"``,
    ``"fp32"``...) or ``"constexpr"``; ``constexprs`` gives the constexpr values. At launch the JIT
    specializes on the arguments that are multiples of 16 (pointers: 16-byte aligned), which changes
    vectorization and software pipelining; ``divisible_by_16`` names those arguments, ``None`` meaning
    every pointer argument (as torch allocates them) and no integer. ``tensor_cores``: the kernel's
    ``tl.dot`` must lower to tensor-core instructions (from sm_80 on; not for exact fp32 products).
    """

    kernel: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    label: str
    divisible_by_16: Optional[tuple] = None
    tensor_cores: bool = False


def aligned_arguments(signature: dict, ints: Iterable[str] = ()) -> tuple:
    """``AotVariant.divisible_by_16`` for every pointer of ``signature`` plus the integers ``ints``."""
    return tuple(name for name, t in signature.items() if t.startswith("*") or name in ints)


def signature_of(kernel, constexprs: dict, element: str, fp32_pointers: Iterable[str] = (),
                 i64_pointers: Iterable[str] = (), fp32_scalars: Iterable[str] = ("eps", "dropout_p"),
                 ints: Iterable[str] = ()) -> dict:
    """The ``AotVariant.signature`` of ``kernel`` as its launcher calls it: ``constexprs`` by name, the
    named fp32/int64 pointers, every other capitalised argument (less ``ints``) a pointer to ``element``
    (e.g. ``"fp16"``), the named fp32 scalars, and 32-bit integers for the rest."""
    fp32_pointers, i64_pointers, fp32_scalars, ints = map(set, (fp32_pointers, i64_pointers, fp32_scalars, ints))
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in fp32_pointers:
            signature[name] = "*fp32"
        elif name in i64_pointers:
            signature[name] = "*i64"
        elif name in fp32_scalars:
            signature[name] = "fp32"
        elif name[0].isupper() and name not in ints:
            signature[name] = f"*{element}"
        else:
            signature[name] = "i32"
    return signature


@dataclass(frozen=True)
class Row:
    """The outcome of compiling one variant for one architecture; ``error`` says why it is not ``ok``.

    ``spill_bytes`` counts the spill stores ptxas reports, ``local_bytes`` the local memory of a thread
    (its stack frame, where spills go), ``shared_bytes`` the shared memory of a block.
    """

    op: str
    kernel: str
    label: str
    arch: int
    num_warps: int
    num_stages: int
    regs: int = 0
    spill_bytes: int = 0
    local_bytes: int = 0
    shared_bytes: int = 0
    smem_limit: int = 0
    tensor_cores: bool = False
    ok: bool = False
    error: Optional[str] = None
    seconds: float = 0.0
    loop_instructions: int = 0
    loop_mma: int = 0
    has_loop: bool = False


@dataclass(frozen=True)
class LoopBody:
    """The main loop of a kernel's SASS (:func:`loop_body`): its instructions and tensor-core instructions;
    without a loop (``loop`` False) the counts are the whole kernel's."""

    instructions: int
    mma: int
    loop: bool


_REGISTRY: dict[str, list[Callable[[int], Iterable[AotVariant]]]] = {}


def register_aot(op: str, variants: Callable[[int], Iterable[AotVariant]]) -> None:
    """Register ``variants(arch)``, listing the :class:`AotVariant` s of ``op`` its launchers may run on
    compute capability ``arch`` (e.g. 86); it is only called by the checks."""
    factories = _REGISTRY.setdefault(op, [])
    if variants not in factories:
        factories.append(variants)


def registered_variants(arch: int) -> list[tuple[str, AotVariant]]:
    """``(op, variant)`` for every variant registered for ``arch``, after importing :mod:`fastbert.kernels`."""
    import fastbert.kernels  # noqa: F401

    return [(op, v) for op, factories in _REGISTRY.items() for factory in factories for v in factory(arch)]


def supported_archs(archs: Sequence[int] = ALL_ARCHS) -> tuple:
    """The archs among ``archs`` that the installed Triton (with its bundled ptxas) compiles for, found
    by compiling a one-line kernel for each."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _init_worker()

    @triton.jit
    def probe(X):
        tl.store(X, 1.0)

    def compiles(arch: int) -> bool:
        try:
            triton.compile(ASTSource(probe, {"X": "*fp32"}), target=GPUTarget("cuda", arch, 32))
            return True
        except Exception:  # an arch this Triton or its ptxas does not know
            return False

    return tuple(a for a in archs if compiles(a))


def check_kernels(archs: Sequence[int] = ARCHS, jobs: Optional[int] = None, match: Optional[str] = None,
                  on_row: Optional[Callable[[Row, int, int], None]] = None) -> list[Row]:
    """Compile, for each arch, the variants registered for it whose op, kernel name or label contains
    ``match``; rows arch by arch."""
    tasks = [(op, v, arch) for arch in archs for op, v in registered_variants(arch)
             if match is None or any(match in s for s in (op, _kernel_name(v.kernel), v.label))]
    return _compile_tasks(tasks, jobs, on_row)


def check_variants(variants: Iterable[tuple[str, AotVariant]], archs: Sequence[int] = ARCHS,
                   jobs: Optional[int] = None,
                   on_row: Optional[Callable[[Row, int, int], None]] = None) -> list[Row]:
    """Compile each ``(op, variant)`` for each architecture in ``jobs`` processes; rows in that order.

    ``on_row(row, done, total)`` is called as each build finishes, in the order they finish.
    """
    return _compile_tasks([(op, v, arch) for op, v in variants for arch in archs], jobs, on_row)


def _compile_tasks(tasks: list, jobs: Optional[int], on_row) -> list[Row]:
    for arch in {arch for _, _, arch in tasks}:
        if arch not in SMEM_LIMITS:
            raise ValueError(f"arch {arch} is not one of {tuple(SMEM_LIMITS)}")
    variants = [(op, v) for op, v, _ in tasks]
    tasks = [(op, _describe(v), arch) for op, v, arch in tasks]
    if not tasks:
        return []
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    context = _mp_context(variants)
    with _environ_without("TRITON_INTERPRET"), \
            ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(_compile_row, *task): i for i, task in enumerate(tasks)}
        rows = [None] * len(tasks)
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            rows[i] = _result(future, *tasks[i])
            if on_row is not None:
                on_row(rows[i], done, len(tasks))
        return rows


def format_report(rows: Sequence[Row]) -> str:
    """The table of ``rows`` and a summary line, as ``fastbert check-kernels`` prints it."""
    header = ("op", "kernel", "variant", "arch", "warps/stages", "regs", "spill B", "smem B / limit",
              "tensor cores", "loop instr/MMA", "time", "result")
    table = [header] + [(r.op, r.kernel, r.label, f"sm_{r.arch}", f"{r.num_warps}/{r.num_stages}",
                         str(r.regs), str(r.spill_bytes), f"{r.shared_bytes} / {r.smem_limit}",
                         "yes" if r.tensor_cores else "no", _body_cell(r), f"{r.seconds:.1f}s", _outcome(r))
                        for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if not r.ok and "\n" in r.error:
            lines += ["", f"{r.kernel} [{r.label}] sm_{r.arch}:", *("    " + s for s in r.error.splitlines()[1:])]
    return "\n".join(lines + ["", summary(rows)])


def format_counts(rows: Sequence[Row]) -> str:
    """A compact table of the main-loop instruction and tensor-core instruction counts of ``rows``
    (``fastbert check-kernels --counts``): body "loop" counts one iteration of the largest innermost loop
    (:func:`loop_body`), "all" the whole kernel where it has no loop; "-" where nothing was built."""
    header = ("op", "kernel", "variant", "arch", "warps/stages", "body", "instr", "MMA", "result")
    table = [header]
    for r in rows:
        built = r.loop_instructions > 0
        counts = (("loop" if r.has_loop else "all"), str(r.loop_instructions), str(r.loop_mma)) if built else ("-",) * 3
        table.append((r.op, r.kernel, r.label, f"sm_{r.arch}", f"{r.num_warps}/{r.num_stages}", *counts,
                      _outcome(r)))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = (6, 7)  # numbers right-aligned, so a change of digits shows
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["", summary(rows)])


def summary(rows: Sequence[Row]) -> str:
    """One line: how many variants compiled for which archs, and either the maxima or the failures."""
    if not rows:
        return "no variants compiled"
    archs = ", ".join(f"sm_{a}" for a in dict.fromkeys(r.arch for r in rows))
    n = len({(r.op, r.kernel, r.label, r.num_warps, r.num_stages) for r in rows})
    compiled = f"{n} variant{'s' if n != 1 else ''} compiled for {archs}"
    failed = [r for r in rows if not r.ok]
    if not failed:
        return (f"{compiled}: all OK, max regs {max(r.regs for r in rows)}, zero spills, "
                f"max smem {max(r.shared_bytes for r in rows)} B")
    names = ", ".join(f"{r.kernel} [{r.label}] sm_{r.arch}" for r in failed)
    return f"{compiled}: {len(failed)} of {len(rows)} builds FAILED: {names}"


def _body_cell(r: Row) -> str:
    """``"212/16"`` for a loop body, ``"all 480/0"`` for a kernel without a loop, ``"-"`` when not built."""
    if not r.loop_instructions:
        return "-"
    return f"{'' if r.has_loop else 'all '}{r.loop_instructions}/{r.loop_mma}"


def _outcome(r: Row) -> str:
    return "OK" if r.ok else f"FAIL({r.error.splitlines()[0]})"


def loop_body(sass: str, function: Optional[str] = None) -> LoopBody:
    """The instruction and tensor-core instruction (HMMA, HGMMA, UTC*MMA...) counts of the main loop of
    ``sass`` (``cuobjdump -sass`` or ``nvdisasm`` text; only ``function``'s code when given and present).

    A branch to an earlier instruction closes a loop whose body runs from the target through the branch.
    The main loop is the largest innermost one (a loop with no other loop inside); without a loop the
    counts cover every instruction before the end-of-code trap (a branch to itself).
    """
    code = _function_code(sass.splitlines(), function)
    instructions, targets = _instructions(code)
    loops = _loops(instructions, targets)
    innermost = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    if innermost:
        first, last = max(innermost, key=lambda loop: loop[1] - loop[0])
        body = [text for _, text in instructions[first:last + 1]]
    else:
        body = [text for _, text in instructions[:_trap(instructions, targets)]]
    return LoopBody(len(body), sum(bool(_MMA.search(text)) for text in body), bool(innermost))


def _function_code(lines: list, function: Optional[str]) -> list:
    """The lines of ``function``'s section of a cuobjdump listing (all lines if it has none by that name)."""
    starts = [i for i, line in enumerate(lines) if _SASS_FUNCTION.match(line)]
    for n, i in enumerate(starts):
        if _SASS_FUNCTION.match(lines[i]).group(1) == function:
            return lines[i:starts[n + 1] if n + 1 < len(starts) else len(lines)]
    return lines


def _instructions(lines: list) -> tuple:
    """``([(address, text)], {label or hex address: instruction index})`` of SASS lines, predicates kept."""
    instructions, labels, targets = [], [], {}
    for line in lines:
        label = _SASS_LABEL.match(line)
        if label:
            labels.append(label.group(1))
            continue
        found = _SASS_INSTRUCTION.match(line)
        if found:
            address = int(found.group(1), 16)
            targets.update({name: len(instructions) for name in labels + [hex(address)]})
            labels = []
            instructions.append((address, found.group(2).strip()))
    return instructions, targets


def _branch_target(text: str, targets: dict) -> Optional[int]:
    """The instruction index a ``BRA`` jumps to (None: not a branch, or to an unknown place)."""
    found = _BRANCH.match(text)
    if found is None:
        return None
    return targets.get(hex(int(found.group(1), 16)) if found.group(1) else found.group(2))


def _loops(instructions: list, targets: dict) -> list:
    """``(first, last)`` instruction indices of each loop: a branch at ``last`` back to ``first``."""
    loops = []
    for i, (_, text) in enumerate(instructions):
        target = _branch_target(text, targets)
        if target is not None and target < i:
            loops.append((target, i))
    return loops


def _trap(instructions: list, targets: dict) -> int:
    """The index of the end-of-code trap ``BRA`` to itself (after the last EXIT), else the count."""
    for i, (_, text) in enumerate(instructions):
        if _branch_target(text, targets) == i:
            return i
    return len(instructions)


def _kernel_name(kernel) -> str:
    return getattr(getattr(kernel, "fn", kernel), "__name__", repr(kernel))


def _describe(v: AotVariant) -> dict:
    """A picklable description of ``v``: workers import the kernel again by module and name."""
    fn = getattr(v.kernel, "fn", v.kernel)
    return dict(module=fn.__module__, qualname=fn.__qualname__, signature=dict(v.signature),
                constexprs=dict(v.constexprs), num_warps=v.num_warps, num_stages=v.num_stages, label=v.label,
                divisible_by_16=v.divisible_by_16, tensor_cores=v.tensor_cores)


def _mp_context(variants):
    """``fork`` where triton and the kernels were loaded for compiling, else ``spawn``.

    Under ``TRITON_INTERPRET`` @triton.jit makes interpreter objects, triton's own ``tl.sum`` & co
    included, so a forked worker could not compile. Spawned workers import everything again, the main
    module too: scripts calling this need an ``if __name__ == "__main__"`` guard.
    """
    import multiprocessing

    from triton.language import standard
    from triton.runtime.jit import JITFunction

    forkable = all(isinstance(f, JITFunction) for f in [standard.sum, *(v.kernel for _, v in variants)])
    if forkable and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _environ_without(name: str):
    """Leave ``name`` out of the environment that the worker processes started meanwhile inherit."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _init_worker() -> None:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _result(future, op, desc, arch) -> Row:
    try:
        return future.result()
    except Exception as e:  # a worker that died, e.g. LLVM crashing
        return _failed(op, desc, arch, f"worker failed: {type(e).__name__}: {e}")


def _failed(op, desc, arch, error, seconds=0.0) -> Row:
    return Row(op, desc["qualname"].rsplit(".", 1)[-1], desc["label"], arch, desc["num_warps"],
               desc["num_stages"], smem_limit=SMEM_LIMITS[arch], ok=False, error=error, seconds=seconds)


def _compile_row(op: str, desc: dict, arch: int) -> Row:
    start = time.perf_counter()
    step = "compile error"
    try:
        ck = _compile(desc, arch)
        step = "resource check failed"
        regs, stack, cubin_shared, local, sass = _cubin_resources(ck.asm["cubin"], ck.metadata.name)
        tensor_cores = bool(_MMA.search(sass))
        body = loop_body(sass, ck.metadata.name)
        spill_stores, spill_loads = _ptxas_spills(ck.asm["ptx"], arch, ck.metadata.enable_fp_fusion)
    except Exception as e:
        message = str(e).strip() or type(e).__name__
        headline = message.splitlines()[-1].strip()
        return _failed(op, desc, arch, f"{step}: {headline}\n{message}", time.perf_counter() - start)
    shared = max(ck.metadata.shared, cubin_shared)
    local_bytes = stack + local
    problems = []
    if spill_stores or spill_loads:
        problems.append(f"spills {spill_stores} B stored, {spill_loads} B loaded")
    elif local_bytes:
        problems.append(f"{local_bytes} B local memory")
    if shared > SMEM_LIMITS[arch]:
        problems.append(f"smem {shared} B > {SMEM_LIMITS[arch]} B")
    if desc["tensor_cores"] and not tensor_cores and arch >= TENSOR_CORE_CAPABILITY[0] * 10:
        problems.append("no tensor-core instruction")
    return Row(op, ck.metadata.name, desc["label"], arch, desc["num_warps"], desc["num_stages"], regs,
               spill_stores, local_bytes, shared, SMEM_LIMITS[arch], tensor_cores, not problems,
               "; ".join(problems) or None, time.perf_counter() - start, body.instructions, body.mma, body.loop)


def _compile(desc: dict, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    kernel = importlib.import_module(desc["module"])
    for part in desc["qualname"].split("."):
        kernel = getattr(kernel, part)
    if not isinstance(kernel, JITFunction):
        raise TypeError(f"{desc['module']}.{desc['qualname']} is a {type(kernel).__name__}, not a triton "
                        "JITFunction (was TRITON_INTERPRET set when it was imported?)")
    names = kernel.arg_names
    if set(desc["signature"]) != set(names):
        raise ValueError(f"signature names {sorted(desc['signature'])} are not the kernel's arguments {names}")
    signature = {name: desc["signature"][name] for name in names}
    aligned = desc["divisible_by_16"]
    if aligned is None:
        aligned = [name for name, t in signature.items() if t.startswith("*")]
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(kernel, signature, constexprs=desc["constexprs"], attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": desc["num_warps"], "num_stages": desc["num_stages"]})


def _cubin_resources(cubin: bytes, name: str):
    """``(regs, stack, shared, local, sass)`` of kernel ``name`` in ``cubin``."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = _run([knobs.nvidia.cuobjdump.path, "-res-usage", path])
        sass = _run([knobs.nvidia.cuobjdump.path, "-sass", path])
    found = re.search(rf"Function {re.escape(name)}:\s+REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    if found is None:
        raise RuntimeError(f"no resource usage of {name} in cuobjdump output:\n{usage}")
    regs, stack, shared, local = map(int, found.groups())
    return regs, stack, shared, local, sass


def _ptxas_spills(ptx: str, arch: int, fp_fusion: bool):
    """``(spill store bytes, spill load bytes)`` that the ptxas triton uses reports for ``ptx``, summed
    over its functions, given triton's flags."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        fmad = [] if fp_fusion else ["--fmad=false"]
        log = _run([get_ptxas(arch).path, "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2",
                    f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", os.path.join(tmp, "kernel.o")])
    found = _SPILLS.findall(log)
    if not found:
        raise RuntimeError(f"no spill counts in ptxas output:\n{log}")
    return sum(int(stores) for stores, _ in found), sum(int(loads) for _, loads in found)


def _run(cmd: list) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr
