"""The LLVM IR every generated module starts with: math, half types, integer helpers.

The functions mirror the C backend's prelude (`backends/c/prelude.py`) op for op, so the two
backends compute the same values: exp, tanh and erf as branch-free range reduction and
polynomials (all selects, no calls, so the loop vectoriser widens the loops that use them), NaN-
propagating max/min, Python's floor division and modulo, integer powers, gather-index clamping,
and f16/bf16 rounding. All are `alwaysinline`.
"""
from __future__ import annotations

from dnet.backends.llvm.ir_text import float_literal as L

INTRINSICS = """
declare float @llvm.log.f32(float)
declare float @llvm.sqrt.f32(float)
declare float @llvm.sin.f32(float)
declare float @llvm.cos.f32(float)
declare float @llvm.fabs.f32(float)
declare float @llvm.floor.f32(float)
declare float @llvm.pow.f32(float, float)
declare float @llvm.copysign.f32(float, float)
declare float @llvm.maxnum.f32(float, float)
declare float @llvm.nearbyint.f32(float)
declare float @llvm.minnum.f32(float, float)
declare float @llvm.fmuladd.f32(float, float, float)
declare <16 x float> @llvm.fmuladd.v16f32(<16 x float>, <16 x float>, <16 x float>)
declare float @llvm.vector.reduce.fadd.v16f32(float, <16 x float>)
declare <32 x float> @llvm.fmuladd.v32f32(<32 x float>, <32 x float>, <32 x float>)
declare float @llvm.vector.reduce.fadd.v32f32(float, <32 x float>)
declare void @dn_parallel(ptr, ptr, i64, i64)
declare i64 @dn_threads()
declare noalias ptr @malloc(i64)
declare void @free(ptr)

attributes #0 = { alwaysinline nounwind }
"""



def _poly(var: str, x: str, coefficients: list[float], prefix: str) -> list[str]:
    """Horner's rule: lines computing %{prefix}N = c0 + x*(c1 + x*(...)), fused multiply-adds."""
    lines, acc = [], L(coefficients[-1])
    steps = list(reversed(coefficients[:-1]))
    for i, c in enumerate(steps):
        name = f"%{var}" if i == len(steps) - 1 else f"%{prefix}{i}"
        lines.append(f"  {name} = call float @llvm.fmuladd.f32(float {acc}, float {x}, float {L(c)})")
        acc = name
    return lines


def _exp() -> str:
    lo, hi, top = L(-87.3365), L(88.37), L(88.7228)
    poly = "\n".join(_poly("p", "%r", [5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3,
                                        1.3981999507e-3, 1.9875691500e-4], "q"))
    return f"""
define internal float @dn_exp(float %x) #0 {{
  %below = fcmp olt float %x, {lo}
  %xc0 = select i1 %below, float {lo}, float %x
  %above = fcmp ogt float %xc0, {hi}
  %xc = select i1 %above, float {hi}, float %xc0
  %t = call float @llvm.fmuladd.f32(float %xc, float {L(1.44269504088896341)}, float {L(0.5)})
  %n = call float @llvm.floor.f32(float %t)
  %r0 = fmul float %n, {L(0.693359375)}
  %r1 = fsub float %xc, %r0
  %r2 = fmul float %n, {L(2.12194440e-4)}
  %r = fadd float %r1, %r2
{poly}
  %rr = fmul float %r, %r
  %pr = fmul float %p, %rr
  %y0 = fadd float %pr, %r
  %y1 = fadd float %y0, {L(1.0)}
  %ni = fptosi float %n to i32
  %nb = add i32 %ni, 127
  %e = shl i32 %nb, 23
  %scale = bitcast i32 %e to float
  %y2 = fmul float %y1, %scale
  %under = fcmp olt float %x, {lo}
  %y3 = select i1 %under, float 0.0, float %y2
  %over = fcmp ogt float %x, {top}
  %y4 = select i1 %over, float {L(float('inf'))}, float %y3
  %nan = fcmp uno float %x, 0.0
  %y = select i1 %nan, float %x, float %y4
  ret float %y
}}
"""


def _tanh() -> str:
    series = "\n".join(_poly("s0", "%x2", [1.0, -0.333333333, 0.133333333, -0.0539682540], "ts"))
    return f"""
define internal float @dn_tanh(float %x) #0 {{
  %a = call float @llvm.fabs.f32(float %x)
  %m = fmul float %a, {L(-2.0)}
  %t = call float @dn_exp(float %m)
  %num = fsub float {L(1.0)}, %t
  %den = fadd float {L(1.0)}, %t
  %q = fdiv float %num, %den
  %x2 = fmul float %x, %x
{series}
  %s = fmul float %a, %s0
  %small = fcmp olt float %a, {L(0.0625)}
  %y = select i1 %small, float %s, float %q
  %r = call float @llvm.copysign.f32(float %y, float %x)
  ret float %r
}}
"""


def _erf() -> str:
    poly = "\n".join(_poly("p0", "%t", [0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429], "ep"))
    series = "\n".join(_poly("s0", "%x2", [1.0, -0.333333333, 0.1, -0.0238095238], "es"))
    return f"""
define internal float @dn_erf(float %x) #0 {{
  %a = call float @llvm.fabs.f32(float %x)
  %d = call float @llvm.fmuladd.f32(float %a, float {L(0.3275911)}, float {L(1.0)})
  %t = fdiv float {L(1.0)}, %d
{poly}
  %p = fmul float %t, %p0
  %na = fneg float %a
  %aa = fmul float %na, %a
  %e = call float @dn_exp(float %aa)
  %pe = fmul float %p, %e
  %y0 = fsub float {L(1.0)}, %pe
  %x2 = fmul float %x, %x
{series}
  %a2 = fmul float %a, {L(1.1283791671)}
  %s = fmul float %a2, %s0
  %small = fcmp olt float %a, {L(0.25)}
  %y = select i1 %small, float %s, float %y0
  %r = call float @llvm.copysign.f32(float %y, float %x)
  ret float %r
}}
"""


REST = f"""
define internal float @dn_recip(float %x) #0 {{
  %r = fdiv float {L(1.0)}, %x
  ret float %r
}}

define internal float @dn_maxf(float %a, float %b) #0 {{
  %an = fcmp uno float %a, 0.0
  %bn = fcmp uno float %b, 0.0
  %gt = fcmp ogt float %a, %b
  %m = select i1 %gt, float %a, float %b
  %mb = select i1 %bn, float %b, float %m
  %r = select i1 %an, float %a, float %mb
  ret float %r
}}

define internal float @dn_minf(float %a, float %b) #0 {{
  %an = fcmp uno float %a, 0.0
  %bn = fcmp uno float %b, 0.0
  %lt = fcmp olt float %a, %b
  %m = select i1 %lt, float %a, float %b
  %mb = select i1 %bn, float %b, float %m
  %r = select i1 %an, float %a, float %mb
  ret float %r
}}

define internal float @dn_modf(float %a, float %b) #0 {{
  %r = frem float %a, %b
  %nz = fcmp une float %r, 0.0
  %rn = fcmp olt float %r, 0.0
  %bn = fcmp olt float %b, 0.0
  %diff = xor i1 %rn, %bn
  %fix = and i1 %nz, %diff
  %rb = fadd float %r, %b
  %y = select i1 %fix, float %rb, float %r
  ret float %y
}}

define internal i64 @dn_floordiv(i64 %a, i64 %b) #0 {{
  %zero = icmp eq i64 %b, 0
  %bs = select i1 %zero, i64 1, i64 %b
  %q = sdiv i64 %a, %bs
  %qb = mul i64 %q, %bs
  %inexact = icmp ne i64 %qb, %a
  %an = icmp slt i64 %a, 0
  %bn = icmp slt i64 %bs, 0
  %diff = xor i1 %an, %bn
  %fix = and i1 %inexact, %diff
  %q1 = sub i64 %q, 1
  %r = select i1 %fix, i64 %q1, i64 %q
  %y = select i1 %zero, i64 0, i64 %r
  ret i64 %y
}}

define internal i64 @dn_mod(i64 %a, i64 %b) #0 {{
  %zero = icmp eq i64 %b, 0
  %bs = select i1 %zero, i64 1, i64 %b
  %r = srem i64 %a, %bs
  %nz = icmp ne i64 %r, 0
  %rn = icmp slt i64 %r, 0
  %bn = icmp slt i64 %bs, 0
  %diff = xor i1 %rn, %bn
  %fix = and i1 %nz, %diff
  %rb = add i64 %r, %bs
  %m = select i1 %fix, i64 %rb, i64 %r
  %y = select i1 %zero, i64 0, i64 %m
  ret i64 %y
}}

define internal i64 @dn_ipow(i64 %a, i64 %b) nounwind {{
entry:
  %neg = icmp slt i64 %b, 0
  br i1 %neg, label %negative, label %loop
negative:
  %one = icmp eq i64 %a, 1
  %minus = icmp eq i64 %a, -1
  %odd = and i64 %b, 1
  %isodd = icmp ne i64 %odd, 0
  %sign = select i1 %isodd, i64 -1, i64 1
  %v1 = select i1 %minus, i64 %sign, i64 0
  %v = select i1 %one, i64 1, i64 %v1
  ret i64 %v
loop:
  %r = phi i64 [1, %entry], [%r2, %step]
  %x = phi i64 [%a, %entry], [%x2, %step]
  %e = phi i64 [%b, %entry], [%e2, %step]
  %done = icmp eq i64 %e, 0
  br i1 %done, label %out, label %step
step:
  %bit = and i64 %e, 1
  %has = icmp ne i64 %bit, 0
  %rx = mul i64 %r, %x
  %r2 = select i1 %has, i64 %rx, i64 %r
  %x2 = mul i64 %x, %x
  %e2 = ashr i64 %e, 1
  br label %loop
out:
  ret i64 %r
}}

define internal i64 @dn_clamp(i64 %i, i64 %n) #0 {{
  %neg = icmp slt i64 %i, 0
  %in = add i64 %i, %n
  %j = select i1 %neg, i64 %in, i64 %i
  %low = icmp slt i64 %j, 0
  %n1 = sub i64 %n, 1
  %high = icmp sge i64 %j, %n
  %k = select i1 %high, i64 %n1, i64 %j
  %y = select i1 %low, i64 0, i64 %k
  ret i64 %y
}}

define internal i16 @dn_f32_to_bf16(float %f) #0 {{
  %u = bitcast float %f to i32
  %abs = and i32 %u, 2147483647
  %nan = icmp ugt i32 %abs, 2139095040
  %hi = lshr i32 %u, 16
  %quiet = or i32 %hi, 64
  %lsb = and i32 %hi, 1
  %bias = add i32 %lsb, 32767
  %r = add i32 %u, %bias
  %rh = lshr i32 %r, 16
  %v = select i1 %nan, i32 %quiet, i32 %rh
  %y = trunc i32 %v to i16
  ret i16 %y
}}

define internal float @dn_round_bf16(float %x) #0 {{
  %h = call i16 @dn_f32_to_bf16(float %x)
  %w = zext i16 %h to i32
  %s = shl i32 %w, 16
  %y = bitcast i32 %s to float
  ret float %y
}}

define internal float @dn_round_f16(float %x) #0 {{
  %h = call i16 @dn_f32_to_f16(float %x)
  %y = call float @dn_f16_to_f32(i16 %h)
  ret float %y
}}
"""

# f16 <-> f32 where the CPU converts (x86 with F16C, AArch64): one instruction each
NATIVE_HALF = """
define internal float @dn_f16_to_f32(i16 %h) #0 {
  %x = bitcast i16 %h to half
  %y = fpext half %x to float
  ret float %y
}

define internal i16 @dn_f32_to_f16(float %f) #0 {
  %x = fptrunc float %f to half
  %y = bitcast half %x to i16
  ret i16 %y
}
"""

# ... and elsewhere in integer arithmetic (LLVM would call compiler-rt's __truncsfhf2, which a JIT in a
# process without that runtime cannot resolve): the C prelude's portable branch, round to nearest even
PORTABLE_HALF = f"""
define internal float @dn_f16_to_f32(i16 %h) #0 {{
  %w = zext i16 %h to i32
  %sign0 = and i32 %w, 32768
  %sign = shl i32 %sign0, 16
  %e0 = lshr i32 %w, 10
  %exp = and i32 %e0, 31
  %man = and i32 %w, 1023
  %mans = shl i32 %man, 13
  %special = icmp eq i32 %exp, 31
  %su = or i32 %sign, 2139095040
  %inf = or i32 %su, %mans
  %eb = add i32 %exp, 112
  %ebs = shl i32 %eb, 23
  %nu = or i32 %sign, %ebs
  %normal = or i32 %nu, %mans
  %sub = uitofp i32 %man to float
  %subf = fmul float %sub, {L(5.9604644775390625e-8)}
  %subu = bitcast float %subf to i32
  %subn = or i32 %subu, %sign
  %isnorm = icmp ne i32 %exp, 0
  %r0 = select i1 %isnorm, i32 %normal, i32 %subn
  %r = select i1 %special, i32 %inf, i32 %r0
  %y = bitcast i32 %r to float
  ret float %y
}}

define internal i16 @dn_f32_to_f16(float %f) #0 {{
  %u = bitcast float %f to i32
  %hi = lshr i32 %u, 16
  %sign = and i32 %hi, 32768
  %a = and i32 %u, 2147483647
  %nan = icmp ugt i32 %a, 2139095040
  %big = icmp uge i32 %a, 1199566848
  %small = icmp ult i32 %a, 947912704
  %g = bitcast i32 %a to float
  %gs = fmul float %g, {L(16777216.0)}
  %gr = call float @llvm.nearbyint.f32(float %gs)
  %gi = fptoui float %gr to i32
  %r0 = sub i32 %a, 939524096
  %r13 = lshr i32 %r0, 13
  %odd = and i32 %r13, 1
  %bias = add i32 %odd, 4095
  %r1 = add i32 %r0, %bias
  %rn = lshr i32 %r1, 13
  %v0 = select i1 %small, i32 %gi, i32 %rn
  %v1 = select i1 %big, i32 31744, i32 %v0
  %v2 = select i1 %nan, i32 32256, i32 %v1
  %v = or i32 %v2, %sign
  %y = trunc i32 %v to i16
  ret i16 %y
}}
"""


def prelude(native_half: bool = True) -> str:
    """The prelude; `native_half`: the CPU converts f16 itself (else integer code does)."""
    return "\n".join([INTRINSICS, _exp(), _tanh(), _erf(), REST, NATIVE_HALF if native_half else PORTABLE_HALF])
