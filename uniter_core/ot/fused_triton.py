"""IPOT as one Triton kernel: one program per problem, the whole plan on-chip for all iterations.

The eager solver launches ~650 small kernels per call and is bound by launch latency (BENCHMARKS.md).
Here each program loads its cost tile once, keeps the kernel matrix and the plan in
registers through every iteration, and writes the plan once, so the memory traffic is the floor
(read C, write T) and there is one launch per call.

Semantics are those of the "batched" solver: IPOT's update, with the cost shifted by its column
minimum (exact: IPOT's region scaling absorbs it) and clamped at KERNEL_RANGE * beta above it, and
guarded denominators, so extreme costs and empty problems give finite plans. Ragged problems are
handled in the kernel from the padding masks; blocks are the next powers of two of T and K.

On CPU tensors it runs in Triton's interpreter, which needs TRITON_INTERPRET=1 in the environment
before triton is first imported (Triton decides at import whether tl.sum and friends are compiled or
interpreted); otherwise a CPU call raises a RuntimeError saying so.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .batched import KERNEL_RANGE
from .problem import check_problem, compute_dtype

MAX_TILE_ELEMENTS = 1 << 15  # BLOCK_T * BLOCK_K on a GPU (128 x 256); beyond, registers spill heavily
MIN_BLOCK = 16


@triton.jit
def _ipot_kernel(cost_ptr, txt_pad_ptr, img_pad_ptr, plan_ptr, params_ptr,
                 n_txt, n_img, iteration, k_inner,
                 stride_cb, stride_ct, stride_ck, stride_tb, stride_tt, stride_ib, stride_ik, stride_pb, stride_pt,
                 BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, USE_FP64: tl.constexpr, TINY: tl.constexpr):
    """One IPOT problem per program; plan [T, K] text-major, contiguous in K."""
    pid = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    in_t = offs_t < n_txt
    in_k = offs_k < n_img
    txt_pad = tl.load(txt_pad_ptr + pid * stride_tb + offs_t * stride_tt, mask=in_t, other=1)
    img_pad = tl.load(img_pad_ptr + pid * stride_ib + offs_k * stride_ik, mask=in_k, other=1)
    real_t = in_t & (txt_pad == 0)
    real_k = in_k & (img_pad == 0)
    len_t = tl.sum(real_t.to(tl.int32), axis=0)
    len_k = tl.sum(real_k.to(tl.int32), axis=0)
    # a side with no real position gives a zero plan: drop every position (written as a vector
    # comparison because the interpreter turns bool-vector & bool-scalar into int32)
    has_both = (tl.minimum(len_t, len_k) > 0).to(tl.int32)
    real_t = real_t & (offs_t < BLOCK_T * has_both)
    real_k = real_k & (offs_k < BLOCK_K * has_both)
    joint = real_t[:, None] & real_k[None, :]

    cost_ptrs = cost_ptr + pid * stride_cb + offs_t[:, None] * stride_ct + offs_k[None, :] * stride_ck
    if USE_FP64:
        cost = tl.load(cost_ptrs, mask=joint, other=0.0).to(tl.float64)
        inv_beta = tl.load(params_ptr).to(tl.float64)
        kernel_range = tl.load(params_ptr + 1).to(tl.float64)
    else:
        cost = tl.load(cost_ptrs, mask=joint, other=0.0).to(tl.float32)
        inv_beta = tl.load(params_ptr).to(tl.float32)
        kernel_range = tl.load(params_ptr + 1).to(tl.float32)
    zero = tl.zeros([BLOCK_T, BLOCK_K], dtype=cost.dtype)
    colmin = tl.min(tl.where(joint, cost, float("inf")), axis=0)
    colmin = tl.where(real_k, colmin, 0.0)
    exponent = tl.maximum((colmin[None, :] - cost) * inv_beta, -kernel_range)
    kernel = tl.where(joint, tl.exp(tl.where(joint, exponent, zero)), zero)

    n_t = tl.maximum(len_t, 1).to(cost.dtype)
    n_k = tl.maximum(len_k, 1).to(cost.dtype)
    sigma = tl.where(real_t, 1.0 / n_t, 0.0).to(cost.dtype)
    delta = tl.zeros([BLOCK_K], dtype=cost.dtype)
    plan = tl.where(joint, zero + 1.0, zero)
    for _ in range(iteration):
        q = kernel * plan
        for _ in range(k_inner):
            col = tl.sum(q * sigma[:, None], axis=0)
            delta = tl.where(real_k, 1.0 / tl.maximum(n_k * col, TINY), 0.0)
            row = tl.sum(q * delta[None, :], axis=1)
            sigma = tl.where(real_t, 1.0 / tl.maximum(n_t * row, TINY), 0.0)
        plan = q * delta[None, :] * sigma[:, None]

    plan_ptrs = plan_ptr + pid * stride_pb + offs_t[:, None] * stride_pt + offs_k[None, :]
    tl.store(plan_ptrs, plan, mask=in_t[:, None] & in_k[None, :])


def interpreter_active() -> bool:
    """True when this process imported Triton with TRITON_INTERPRET=1, so the kernel can run on CPU."""
    return isinstance(_ipot_kernel, InterpretedFunction) and isinstance(tl.sum, InterpretedFunction)


def fits_on_chip(n_txt: int, n_img: int) -> bool:
    """Whether a [n_txt, n_img] problem is small enough for the compiled kernel's on-chip tile."""
    return _block(n_txt) * _block(n_img) <= MAX_TILE_ELEMENTS


def compile_cuda(n_txt: int, n_img: int, dtype: torch.dtype = torch.float32, arch: int = 90):
    """Compile the kernel ahead of time for an NVIDIA GPU of compute capability `arch` (90 = H100),
    without needing one: catches compile errors the interpreter cannot see, and its .asm holds the
    PTX and cubin for inspecting registers and spills."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compute = compute_dtype(dtype)
    pointer = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
    signature = {name: "i32" for name in _ipot_kernel.arg_names}
    signature.update(cost_ptr=pointer[dtype], txt_pad_ptr="*i1", img_pad_ptr="*i1", plan_ptr=pointer[compute],
                     params_ptr=pointer[compute], BLOCK_T="constexpr", BLOCK_K="constexpr", USE_FP64="constexpr",
                     TINY="constexpr")
    block_t, block_k = _block(n_txt), _block(n_img)
    constants = {"BLOCK_T": block_t, "BLOCK_K": block_k, "USE_FP64": compute == torch.float64,
                 "TINY": torch.finfo(compute).tiny}
    return triton.compile(ASTSource(fn=_ipot_kernel, signature=signature, constexprs=constants),
                          target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": _num_warps(block_t * block_k), "enable_fp_fusion": True})


@functools.lru_cache(maxsize=64)
def _params(beta: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1 / beta, kernel range] on the device, in the compute dtype (a float argument would be fp32);
    cached so that a call does no host-to-device copy."""
    return torch.tensor([1.0 / beta, KERNEL_RANGE[dtype]], dtype=dtype, device=device)


def _block(n: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(max(n, 1)))


def _num_warps(tile_elements: int) -> int:
    """Warps per problem, from `bench --device cuda --sweep-warps` on an H200 (Triton 3.6, BENCHMARKS.md):
    4 warps at 32x64 tiles, 8 at 64x64, and 2 at 64x128, where fewer warps mean cheaper reductions and more
    problems resident per SM (0.32 ms against 0.44 ms with 16 warps at 512 x 60 x 100). Larger tiles are
    untimed and keep about 16 elements per thread, which fits the registers without spills up to 128x128."""
    if tile_elements <= 2048:
        return 4
    if tile_elements <= 4096:
        return 8
    if tile_elements <= 8192:
        return 2
    return min(32, tile_elements // 512)


@torch.no_grad()
def ipot_fused(cost: torch.Tensor, txt_pad: torch.Tensor | None = None, img_pad: torch.Tensor | None = None,
               beta: float = 0.5, iteration: int = 50, k: int = 1, num_warps: int | None = None) -> torch.Tensor:
    """IPOT plan [B, T, K] from one kernel launch (float64 for float64 input, float32 otherwise).

    num_warps overrides the heuristic (for tuning on a new GPU: `bench --device cuda --sweep-warps`).
    """
    txt_pad, img_pad = check_problem(cost, txt_pad, img_pad, beta, iteration, k)
    dtype = compute_dtype(cost.dtype)
    batch, n_txt, n_img = cost.shape
    plan = torch.empty(batch, n_txt, n_img, dtype=dtype, device=cost.device)
    if plan.numel() == 0:
        return plan
    block_t, block_k = _block(n_txt), _block(n_img)
    interpret = interpreter_active()
    if cost.device.type != "cuda" and not interpret:
        raise RuntimeError(f"solver='fused' needs a CUDA tensor (got {cost.device.type}), or Triton's interpreter: "
                           "set TRITON_INTERPRET=1 in the environment before triton is imported")
    if not interpret and not fits_on_chip(n_txt, n_img):
        raise ValueError(f"solver='fused' keeps a {block_t}x{block_k} tile on-chip, more than "
                         f"{MAX_TILE_ELEMENTS} elements; use solver='batched' for problems this large")
    cost = cost.detach()
    _ipot_kernel[(batch,)](
        cost, txt_pad, img_pad, plan, _params(beta, dtype, cost.device),
        n_txt, n_img, int(iteration), int(k),
        cost.stride(0), cost.stride(1), cost.stride(2), txt_pad.stride(0), txt_pad.stride(1),
        img_pad.stride(0), img_pad.stride(1), plan.stride(0), plan.stride(1),
        BLOCK_T=block_t, BLOCK_K=block_k, USE_FP64=dtype == torch.float64,
        TINY=torch.finfo(dtype).tiny, num_warps=num_warps or _num_warps(block_t * block_k),
        enable_fp_fusion=True,  # explicit: Triton 3.9 warns that its default will change
    )
    return plan
