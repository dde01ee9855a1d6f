"""Run Megatron-Core's own DDP, optimizer, schedules and checkpointing on a CPU-only machine.

Megatron-Core 0.16 hard-codes CUDA in places that have nothing to do with arithmetic: it asks
``torch.cuda.current_device()`` where to allocate, creates streams and events, synchronises, keeps
its model-parallel RNG in the CUDA generator, and compares tensor type strings against
``'torch.cuda.FloatTensor'``. :func:`install` redirects exactly those calls to the CPU, and only
when CUDA is absent. It never touches an op that computes: losses on CPU are Megatron's own.

How: every ``megatron.core.*`` and ``modelopt.torch.*`` module that refers to ``torch`` gets a
*view* of torch in which ``torch.cuda`` is :data:`CPU_CUDA` (a namespace answering with the CPU)
and a handful of factory functions map ``device="cuda"`` to the CPU. The real ``torch`` module is
untouched for everybody else. The modules loaded when :func:`install` runs are redirected there;
any loaded later (``megatron.core.inference.*`` for generation, modelopt's Megatron plugins for
pruning and distillation) are redirected as they load, by an import hook (:class:`_RedirectingFinder`
on ``sys.meta_path``) that gives each the view right after its code ran. Three things cannot be
reached through a module's globals and are patched on the torch classes, for callers inside those
packages only (anyone else still gets torch's own error without CUDA): ``Tensor.cuda`` and
``Module.cuda`` become no-ops, and ``Tensor.type()`` (Megatron callers) names CUDA types.

Leaves out: nothing here runs when CUDA is present (:func:`install` returns False), and no op that
computes is replaced. The megatron-core version these redirections are written for is checked by
``backend.prepare`` (``check_megatron_core_version``).

Redirections, with the Megatron-Core 0.16.1 file they serve (see shared notes):
- ``torch.cuda.current_device`` -> "cpu": utils.py:631 (global memory buffer),
  rotary_pos_embedding.py:162, param_and_grad_buffer.py:783-806, optimizer.py:473-485,
  p2p_communication.py:190-202/313/321, ssm/*, moe/router.py:90-198.
- ``torch.cuda.synchronize/Stream/Event/stream/default_stream/current_stream`` -> no-ops:
  p2p_communication.py:242/398, filesystem_async.py:230, distributed_data_parallel.py:230,
  param_and_grad_buffer.py:417-529, moe/token_dispatcher.py:445/871-898.
- Late imports, same view: inference/text_generation_controllers/text_generation_controller.py:75
  (``torch.Generator(device=torch.cuda.current_device())``), :100/476/999/1056-1067,
  inference/communication_utils.py:76/158/180, inference/model_inference_wrappers/
  abstract_model_inference_wrapper.py:174-313, inference/utils.py:35; and nvidia-modelopt 0.43
  ``prune/plugins/mcore_minitron.py:145-146`` (``Tensor.cuda`` before the depth-pruning gather).
- ``torch.{zeros,empty,ones,full,tensor,arange}(device="cuda")`` -> CPU: schedules.py:596/983/2138,
  param_and_grad_buffer.py:768; ``pin_memory=True`` -> False (no pinned allocator without CUDA):
  rope_utils.py:62-64 (RoPE's context-parallel chunk index).
- CUDA RNG (``tensor_parallel/random.py``: manual_seed, get/set_rng_state, the tracker's
  ``_get_cuda_rng_state``/``_set_cuda_rng_state``) -> the CPU generator; the tracker's
  fork/restore semantics are kept, so dropout regions draw from the model-parallel stream.
- ``Tensor.type()`` string checks (distrib_optimizer.py:361/420/582, optimizer.py:671/690,
  clip_grads.py:167) see CUDA names for CPU tensors when the caller is Megatron code.
- gloo's ``all_gather_into_tensor`` rejects 0-dim tensors that Megatron passes: reshaped to 1-dim.
- MoE: the all-to-all dispatcher's split sizes become numpy arrays on CPU as they do on CUDA
  (moe_utils.py:1093-1098), and its side-stream event (token_dispatcher.py:895-899) is a no-op.
- Mamba: ``ssm/mamba_mixer.py:22-26`` imports three Triton kernels (``inference/contexts/
  attention_context/triton/tensor_ops.py:6`` imports triton) used only by dynamic-batching
  inference; without Triton a stand-in module makes the import succeed and raises if they are
  called. ``ssm/mamba_mixer.py:303-360`` (``current_device``) then see the CPU like the rest, as does
  ``transformer/attention.py:430`` (KV-cache buffers of a ``StaticInferenceContext``). The
  hybrid model itself runs the portable mixer; Megatron's mixer is imported on CPU only by tests
  that compare the two.

Two Megatron 0.16.1 bugs on the path without TE, fixed narrowly here because they only bite where
that path runs: the MoE router's gating GEMM names ``te_general_gemm``, unbound without TE
(:func:`_fix_moe_router_gemm_without_te`); and, on the torch AdamW fallback (no apex/TE), reloading the distributed optimizer (``fully_reshardable``)
copies every key of the live per-parameter state, ``step`` included, from loaded tensors that
never carry ``step`` (distrib_optimizer.py:937-940, KeyError 'step'). :func:`_fix_distopt_step_reload`
skips ``step`` there; Megatron restores it from the param groups itself (distrib_optimizer.py:817-825).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import sys
import types

import torch

_INSTALLED = False
_CPU = torch.device("cpu")
# The packages whose modules see the CPU view of torch (and whose calls to .cuda() are no-ops).
REDIRECTED_PACKAGES = ("megatron.core", "modelopt.torch")


def is_redirected(module_name: str) -> bool:
    """True for ``megatron.core``, ``modelopt.torch`` and their submodules."""
    return any(module_name == p or module_name.startswith(p + ".") for p in REDIRECTED_PACKAGES)


def _to_cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return _CPU
    if isinstance(device, str) and device.startswith("cuda"):
        return _CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return _CPU
    return device


class _NoOpStream:
    """Stands in for ``torch.cuda.Stream``/``Event``: every method is a no-op."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *a, **k: None

    def query(self):
        return True

    def record_event(self, *args, **kwargs):
        # moe/token_dispatcher.py:895-899 records an event on its side stream and later waits on it.
        return _NoOpStream()

    def elapsed_time(self, other):
        return 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cpu_get_rng_state(device=None, *args, **kwargs):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state, device=None, *args, **kwargs):
    torch.set_rng_state(new_state)


def _build_cpu_cuda_namespace() -> types.ModuleType:
    """A ``torch.cuda`` look-alike that answers with the CPU (used only by Megatron modules)."""
    ns = types.ModuleType("torch.cuda")
    ns.__dict__.update(torch.cuda.__dict__)
    ns.is_available = lambda: False
    ns.current_device = lambda: "cpu"
    ns.device_count = lambda: 0
    ns.set_device = lambda *a, **k: None
    ns.synchronize = lambda *a, **k: None
    ns.empty_cache = lambda *a, **k: None
    ns.Stream = _NoOpStream
    ns.Event = _NoOpStream
    ns.stream = lambda *a, **k: contextlib.nullcontext()
    ns.default_stream = lambda *a, **k: _NoOpStream()
    ns.current_stream = lambda *a, **k: _NoOpStream()
    ns.memory_allocated = lambda *a, **k: 0
    ns.max_memory_allocated = lambda *a, **k: 0
    ns.memory_reserved = lambda *a, **k: 0
    ns.reset_peak_memory_stats = lambda *a, **k: None
    ns.get_rng_state = _cpu_get_rng_state
    ns.set_rng_state = _cpu_set_rng_state
    ns.manual_seed = lambda seed: torch.manual_seed(seed)
    ns.manual_seed_all = lambda seed: torch.manual_seed(seed)
    ns.is_current_stream_capturing = lambda: False
    ns.nvtx = types.SimpleNamespace(range_push=lambda *a, **k: None, range_pop=lambda *a, **k: None,
                                    range=lambda *a, **k: contextlib.nullcontext())
    rnd = types.ModuleType("torch.cuda.random")
    rnd.get_rng_state = _cpu_get_rng_state
    rnd.set_rng_state = _cpu_set_rng_state
    ns.random = rnd
    return ns


CPU_CUDA = _build_cpu_cuda_namespace()


def _device_redirecting(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            # Pinned host memory needs a CUDA allocator; it only speeds host-to-device copies.
            kwargs["pin_memory"] = False
        return fn(*args, **kwargs)

    return wrapper


class _TorchView(types.ModuleType):
    """torch as the redirected modules see it. Attributes torch gains after the view was built
    (submodules imported later: ``torch.onnx``, ``torch._dynamo``, ...) are read from torch itself."""

    def __getattr__(self, name):
        return getattr(torch, name)


def _build_torch_view() -> types.ModuleType:
    view = _TorchView("torch")
    view.__dict__.update(torch.__dict__)
    view.cuda = CPU_CUDA
    for name in ("zeros", "empty", "ones", "full", "tensor", "arange", "randn", "rand",
                 "zeros_like", "empty_like", "ones_like", "as_tensor"):
        setattr(view, name, _device_redirecting(getattr(torch, name)))
    return view


TORCH_VIEW = _build_torch_view()


def _caller_name(depth: int) -> str:
    try:
        frame = sys._getframe(depth + 1)
    except ValueError:  # pragma: no cover
        return ""
    return frame.f_globals.get("__name__", "")


def _megatron_caller(depth: int = 2) -> bool:
    return _caller_name(depth).startswith("megatron.")


def _redirected_caller(depth: int = 2) -> bool:
    return is_redirected(_caller_name(depth))


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _patch_torch_classes() -> None:
    orig_type = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs and _megatron_caller():
            name = orig_type(self)
            return _CUDA_TYPE_NAMES.get(name, name)
        return orig_type(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_
    # Without CUDA these raise; Megatron (about 60 files) and modelopt (mcore_minitron.py:145-146)
    # call them to place buffers "on the GPU". Anyone else keeps torch's own behaviour.
    orig_tensor_cuda = torch.Tensor.cuda
    orig_module_cuda = torch.nn.Module.cuda

    @functools.wraps(orig_tensor_cuda)
    def tensor_cuda(self, *args, **kwargs):
        if _redirected_caller():
            return self
        return orig_tensor_cuda(self, *args, **kwargs)

    @functools.wraps(orig_module_cuda)
    def module_cuda(self, *args, **kwargs):
        if _redirected_caller():
            return self
        return orig_module_cuda(self, *args, **kwargs)

    torch.Tensor.cuda = tensor_cuda
    torch.nn.Module.cuda = module_cuda

    orig_all_gather_into_tensor = torch.distributed.all_gather_into_tensor

    @functools.wraps(orig_all_gather_into_tensor)
    def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
        if input_tensor.dim() == 0:
            input_tensor = input_tensor.reshape(1)
        return orig_all_gather_into_tensor(output_tensor, input_tensor, group=group, async_op=async_op)

    torch.distributed.all_gather_into_tensor = all_gather_into_tensor


_TRITON_TENSOR_OPS = "megatron.core.inference.contexts.attention_context.triton.tensor_ops"


def _stub_triton_tensor_ops() -> None:
    """Serves ssm/mamba_mixer.py:22-26 (import of tensor_get_slice_after, tensor_masked_update,
    tensor_merge from triton/tensor_ops.py, which needs triton at its line 6); those kernels run only
    in MambaMixer._dynamic_inference / dynamic-batching _ssm_prefill."""
    import importlib.util

    if _TRITON_TENSOR_OPS in sys.modules or importlib.util.find_spec("triton") is not None:
        return
    stub = types.ModuleType(_TRITON_TENSOR_OPS)
    stub.__doc__ = "nemo_reason cpu_compat stand-in: Triton is not installed on this CPU machine."

    def _needs_triton(*args, **kwargs):
        raise RuntimeError("dynamic-batching Mamba inference needs Triton kernels (CUDA); "
                           "use a StaticInferenceContext on CPU")

    for fn in ("tensor_get_slice_after", "tensor_masked_update", "tensor_merge"):
        setattr(stub, fn, _needs_triton)
    sys.modules[_TRITON_TENSOR_OPS] = stub


class _RedirectingLoader(importlib.abc.Loader):
    """Runs a module with its own loader, then gives it the CPU view of torch; everything else
    (``get_source``, resource readers, ``is_package``, ...) is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        redirect_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _RedirectingFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: finds ``megatron.core.*``/``modelopt.torch.*`` modules with the
    finders after it and wraps their loader in :class:`_RedirectingLoader`; passes on the rest."""

    nemo_reason_cpu_redirect = True  # marks it also across a reload of this module (no recursion)

    def find_spec(self, fullname, path, target=None):
        if not is_redirected(fullname):
            return None
        for finder in sys.meta_path:
            if getattr(finder, "nemo_reason_cpu_redirect", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module") \
                and not isinstance(spec.loader, _RedirectingLoader):
            spec.loader = _RedirectingLoader(spec.loader)
        return spec


def _install_import_hook() -> None:
    if not any(getattr(f, "nemo_reason_cpu_redirect", False) for f in sys.meta_path):
        sys.meta_path.insert(0, _RedirectingFinder())


def _fix_distopt_step_reload() -> None:
    from megatron.core.optimizer import distrib_optimizer as dopt

    if getattr(dopt, "HAVE_APEX_OR_TE", True):
        return
    cls = dopt.DistributedOptimizer
    orig = cls._set_main_param_and_optimizer_states
    if getattr(orig, "_nemo_reason_fixed", False):
        return

    @functools.wraps(orig)
    def set_states(self, model_param, tensors):
        if "step" in tensors:
            return orig(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state[main_param]
        step = state.pop("step", None)
        try:
            return orig(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    set_states._nemo_reason_fixed = True
    cls._set_main_param_and_optimizer_states = set_states


def _fix_moe_router_gemm_without_te() -> None:
    """moe/moe_utils.py:1192/1225 test ``te_general_gemm is not None`` but the name is only bound
    when Transformer Engine imports (moe_utils.py:25-37), so the router's gating GEMM raises
    NameError without TE. Binding it to None selects Megatron's own torch.mm path there."""
    from megatron.core.transformer.moe import moe_utils

    if "te_general_gemm" not in moe_utils.__dict__:
        moe_utils.te_general_gemm = None


def _split_sizes_as_numpy_on_cpu() -> None:
    """moe/moe_utils.py:1093-1098 (``maybe_move_tensor_to_cpu``) turns the all-to-all split sizes
    into numpy arrays only for CUDA tensors; for CPU tensors it returns the tensor, which
    ``all_to_all_single`` rejects as split sizes (token_dispatcher.py:876-886). On CPU the device
    copy is already done, so only the numpy conversion is applied, as on CUDA."""
    from megatron.core.transformer.moe import token_dispatcher

    orig = token_dispatcher.maybe_move_tensor_to_cpu
    if getattr(orig, "_nemo_reason_fixed", False):
        return

    @functools.wraps(orig)
    def move(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor) and tensor.device.type == "cpu":
            return tensor.numpy()
        return orig(tensor, as_numpy=as_numpy, record_stream=record_stream)

    move._nemo_reason_fixed = True
    token_dispatcher.maybe_move_tensor_to_cpu = move


def redirect_module(module: types.ModuleType) -> None:
    """Give one Megatron/modelopt module the CPU view of torch (idempotent). Its functions read
    ``torch`` from the module's globals when they run, so this also serves code defined before."""
    g = module.__dict__
    if g.get("torch") is torch:
        g["torch"] = TORCH_VIEW


def install() -> bool:
    """Redirect Megatron-Core's CUDA hard-codes to the CPU. No-op (returns False) with CUDA."""
    global _INSTALLED
    if _INSTALLED:
        return True
    if torch.cuda.is_available():
        return False
    _stub_triton_tensor_ops()
    # Modules loaded from now on are redirected as they load; those loaded already, here.
    _install_import_hook()
    for name, module in list(sys.modules.items()):
        if module is not None and is_redirected(name):
            redirect_module(module)
    import megatron.core.tensor_parallel.random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, *a, **k: torch.set_rng_state(new_state)
    mrandom._lazy_call = lambda fn, *a, **k: fn()
    _patch_torch_classes()
    _fix_distopt_step_reload()
    _fix_moe_router_gemm_without_te()
    _split_sizes_as_numpy_on_cpu()
    _INSTALLED = True
    return True


def installed() -> bool:
    return _INSTALLED
