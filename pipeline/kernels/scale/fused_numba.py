"""Compiled (numba) loops of :mod:`pipeline.kernels.scale.fused`; private, see that module for the
math.

Layout: views are (B, y, x) float32, masks (y, x) bool, all C-contiguous. The score loop runs
row by row; inside a row, each step is a flat loop over columns with no cross-iteration
dependence, so LLVM vectorises it. With a structure-noise stencil, filled rows of both views
are kept in a four-row ring per band (they stay in cache): while row ``r`` is scored from rows
``r - 1``, ``r``, ``r + 1``, row ``r + 2`` is read from memory and filled in the same loop, so
its loads overlap the arithmetic. Without a stencil, the views are read once, directly. The
per-before-date tables are read per *run* of equal group along the row (rows hold long runs),
so no vectorised loop gathers. Every function releases the GIL (``nogil``) and is cached on
disk.

Fast-math is limited to contraction (fused multiply-add): NaN tests must stay exact, and a
vectorised loop must give the same bits as its scalar remainder, so the numpy and dask paths
(chunks of other widths) agree exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FASTMATH = {"contract"}
"""LLVM fast-math flags of the kernels."""


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def fill_px(bv, av, b_ok, a_ok):  # type: ignore[no-untyped-def]
    """Filled (before, after) values of one pixel and band.

    An invalid after view takes the before value, an invalid before view the filled after
    value; NaN becomes 0 (:func:`pipeline.kernels.detect.pairwise.pair_change` fills the same way).
    Both values are always read: selects, not masked loads.
    """
    a = av if a_ok else bv
    a = a if a == a else np.float32(0.0)
    v = bv if b_ok else a
    return (v if v == v else np.float32(0.0)), a


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def fill_row(before, after, before_ok, after_ok, r, fb, fa):  # type: ignore[no-untyped-def]
    """Filled before/after values of row ``r`` into ``fb``/``fa`` (B, nx) (see :func:`fill_px`)."""
    nb, _, nx = before.shape
    b_ok, a_ok = before_ok[r], after_ok[r]
    for b in range(nb):
        br, ar, fbb, fab = before[b, r], after[b, r], fb[b], fa[b]
        for x in range(nx):
            fbb[x], fab[x] = fill_px(br[x], ar[x], b_ok[x], a_ok[x])


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def structure_px(top, bot, left, mid, right, inv_dy, inv_dx):  # type: ignore[no-untyped-def]
    """Squared gradient (as :func:`numpy.gradient`) and squared 5-point Laplacian at a pixel."""
    gy = (bot - top) * inv_dy
    gx = (right - left) * inv_dx
    lap = (bot - np.float32(2.0) * mid + top) + (right - np.float32(2.0) * mid + left)
    return gy * gy + gx * gx, lap * lap


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def z_px(bt, bm, bb, at, am, ab, x, xl, xr, inv_dy, inv_dx, g, o, lv, sg2, vv, reg2, blur2):  # type: ignore[no-untyped-def]
    """Standardised difference at column ``x`` with the structure noise of both views."""
    zero = np.float32(0.0)
    gs_b, ls_b = structure_px(bt[x], bb[x], bm[xl], bm[x], bm[xr], inv_dy, inv_dx)
    gs_a, ls_a = structure_px(at[x], ab[x], am[xl], am[x], am[xr], inv_dy, inv_dx)
    gg = g * g
    var = sg2 + reg2 * max(min(gg * gs_b, gs_a) - vv, zero)
    var = var + blur2 * max(min(gg * ls_b, ls_a) - np.float32(20.0) * vv, zero)
    return (am[x] - (bm[x] * g + o) - lv) / np.sqrt(var)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def z_stencil(fb, fa, ring, b, g, o, lv, sg, vv, reg2, blur2, inv_dy, x0, x1, zb, ahead):  # type: ignore[no-untyped-def]
    """Standardised differences of band ``b`` over columns ``x0:x1`` (full noise model).

    ``ahead`` = (fill, before row, after row, before_ok row, after_ok row) of a row two rows
    down: when ``fill``, its filled values of band ``b`` are written to ring slot ``ring[3]``
    in the same loop, so that its loads from memory overlap this row's arithmetic.
    """
    fill, sb, sa, sbo, sao = ahead
    bt, bm, bb = fb[ring[0], b], fb[ring[1], b], fb[ring[2], b]
    at, am, ab = fa[ring[0], b], fa[ring[1], b], fa[ring[2], b]
    db, da = fb[ring[3], b], fa[ring[3], b]
    nx = bm.shape[0]
    sg2 = sg * sg
    half = np.float32(0.5)
    one = np.uint64(1)
    # Interior: central differences. Unsigned indices: no negative-index wraparound, so the
    # loop vectorises.
    lo, hi = np.uint64(max(x0, 1)), np.uint64(max(min(x1, nx - 1), 1))
    if fill:
        for x in range(lo, hi):
            zb[x] = z_px(
                bt, bm, bb, at, am, ab, x, x - one, x + one, inv_dy, half, g, o, lv, sg2, vv, reg2,
                blur2,
            )  # fmt: skip
            db[x], da[x] = fill_px(sb[x], sa[x], sbo[x], sao[x])
    else:
        for x in range(lo, hi):
            zb[x] = z_px(
                bt, bm, bb, at, am, ab, x, x - one, x + one, inv_dy, half, g, o, lv, sg2, vv, reg2,
                blur2,
            )  # fmt: skip
    for x in range(0, nx, max(nx - 1, 1)):  # array edges: one-sided, Laplacian replicated
        if x0 <= x < x1:
            xl, xr = max(x - 1, 0), min(x + 1, nx - 1)
            inv_dx = np.float32(1.0) if xr > xl else np.float32(0.0)
            zb[x] = z_px(
                bt, bm, bb, at, am, ab, x, xl, xr, inv_dy, inv_dx, g, o, lv, sg2, vv, reg2, blur2
            )
            if fill:
                db[x], da[x] = fill_px(sb[x], sa[x], sbo[x], sao[x])


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def z_plain(before, after, r, b, g, o, lv, sg, x0, x1, zb):  # type: ignore[no-untyped-def]
    """Standardised differences of band ``b`` of row ``r`` over ``x0:x1`` (no stencil).

    ``sqrt(sg^2) == sg`` exactly in IEEE arithmetic, so this equals the stencil path with a
    zero structure term. Invalid pixels may give any value (they are not scored).
    """
    br, ar = before[b, r], after[b, r]
    for x in range(np.uint64(x0), np.uint64(x1)):  # unsigned: no wraparound, vectorises
        zb[x] = (ar[x] - (br[x] * g + o) - lv) / sg


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def group_runs(index_row, ng, runs):  # type: ignore[no-untyped-def]
    """Runs of equal (clipped) before-date group along a row; returns their number ``n``.

    Run ``i`` covers ``runs[0, i]:runs[0, i + 1]`` and has group ``runs[1, i]``.
    """
    n = 0
    prev = np.int64(-1)
    for x in range(index_row.shape[0]):
        gi = min(max(np.int64(index_row[x]), 0), ng - 1)
        if gi != prev:
            runs[0, n] = x
            runs[1, n] = gi
            n += 1
            prev = gi
    runs[0, n] = index_row.shape[0]
    return n


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def finish4(z, white, scale, fit_ok, b_ok, a_ok, seed_thr, grow_thr, score, cls):  # type: ignore[no-untyped-def]
    """Score and class of one row from its standardised differences, four bands (unrolled)."""
    w00, w01, w02, w03 = white[0, 0], white[0, 1], white[0, 2], white[0, 3]
    w10, w11, w12, w13 = white[1, 0], white[1, 1], white[1, 2], white[1, 3]
    w20, w21, w22, w23 = white[2, 0], white[2, 1], white[2, 2], white[2, 3]
    w30, w31, w32, w33 = white[3, 0], white[3, 1], white[3, 2], white[3, 3]
    z0, z1, z2, z3 = z[0], z[1], z[2], z[3]
    for x in range(z0.shape[0]):
        a = w00 * z0[x] + w01 * z1[x] + w02 * z2[x] + w03 * z3[x]
        b = w10 * z0[x] + w11 * z1[x] + w12 * z2[x] + w13 * z3[x]
        c = w20 * z0[x] + w21 * z1[x] + w22 * z2[x] + w23 * z3[x]
        d = w30 * z0[x] + w31 * z1[x] + w32 * z2[x] + w33 * z3[x]
        v = (a * a + b * b + c * c + d * d) / scale
        used = b_ok[x] & a_ok[x] & fit_ok
        score[x] = v if used else np.float32(np.nan)
        k = np.uint8(v >= grow_thr) + np.uint8(v >= seed_thr)
        cls[x] = k if used else np.uint8(255)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def finish(z, white, scale, fit_ok, b_ok, a_ok, seed_thr, grow_thr, score, cls, wk, raw):  # type: ignore[no-untyped-def]
    """Score and class of one row from its standardised differences, any number of bands."""
    nb, nx = z.shape
    for x in range(nx):
        raw[x] = 0.0
    for k in range(nb):
        c = white[k, 0]
        z0 = z[0]
        for x in range(nx):
            wk[x] = c * z0[x]
        for b in range(1, nb):
            c = white[k, b]
            zb = z[b]
            for x in range(nx):
                wk[x] += c * zb[x]
        for x in range(nx):
            raw[x] += wk[x] * wk[x]
    for x in range(nx):
        v = raw[x] / scale
        used = b_ok[x] & a_ok[x] & fit_ok
        score[x] = v if used else np.float32(np.nan)
        k = np.uint8(v >= grow_thr) + np.uint8(v >= seed_thr)
        cls[x] = k if used else np.uint8(255)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def core_rows(  # type: ignore[no-untyped-def]
    before,
    after,
    before_ok,
    after_ok,
    index,
    gain,
    offset,
    sigma,
    white,
    level,
    gsigma,
    reg2,
    blur2,
    scale,
    fit_ok,
    seed_thr,
    grow_thr,
    score,
    cls,
    r0,
    r1,
):
    """Rows ``r0:r1`` of score and class (a stencil reads rows ``r0 - 1`` to ``r1``)."""
    nb, ny, nx = before.shape
    ng = level.shape[0]
    stencil = reg2 > 0 or blur2 > 0
    fb = np.empty((4, nb, nx if stencil else 1), np.float32)
    fa = np.empty((4, nb, nx if stencil else 1), np.float32)
    z = np.empty((nb, nx), np.float32)
    wk = np.empty(nx, np.float32)
    raw = np.empty(nx, np.float32)
    ring = np.empty(4, np.int64)
    runs = np.zeros((2, nx + 1), np.int64)
    n_runs = 1
    runs[0, 1] = nx
    if stencil:
        for q in range(max(r0 - 1, 0), min(r0 + 2, ny)):
            fill_row(before, after, before_ok, after_ok, q, fb[q % 4], fa[q % 4])
    for r in range(r0, r1):
        rm, rp = max(r - 1, 0), min(r + 1, ny - 1)
        q = r + 2  # filled while row r is scored (rows up to r1 are needed)
        fill = stencil and q < min(ny, r1 + 1)
        qs = q if fill else r
        ring[0], ring[1], ring[2], ring[3] = rm % 4, r % 4, rp % 4, q % 4
        inv_dy = np.float32(1.0 / (rp - rm)) if rp > rm else np.float32(0.0)
        if ng > 1:
            n_runs = group_runs(index[r], ng, runs)
        for b in range(nb):
            g, o = gain[b], offset[b]
            vv = sigma[b] * sigma[b] / np.float32(2.0)
            for i in range(n_runs):
                gi, x0, x1 = runs[1, i], runs[0, i], runs[0, i + 1]
                if stencil:
                    ahead = (fill, before[b, qs], after[b, qs], before_ok[qs], after_ok[qs])
                    z_stencil(
                        fb,
                        fa,
                        ring,
                        b,
                        g,
                        o,
                        level[gi, b],
                        gsigma[gi, b],
                        vv,
                        reg2,
                        blur2,
                        inv_dy,
                        x0,
                        x1,
                        z[b],
                        ahead,
                    )
                else:
                    z_plain(before, after, r, b, g, o, level[gi, b], gsigma[gi, b], x0, x1, z[b])
        if nb == 4:
            finish4(
                z,
                white,
                scale,
                fit_ok,
                before_ok[r],
                after_ok[r],
                seed_thr,
                grow_thr,
                score[r],
                cls[r],
            )
        else:
            finish(
                z,
                white,
                scale,
                fit_ok,
                before_ok[r],
                after_ok[r],
                seed_thr,
                grow_thr,
                score[r],
                cls[r],
                wk,
                raw,
            )


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def classify_flat(score, seed_thr, grow_thr, cls):  # type: ignore[no-untyped-def]
    """Class of each score (255 for NaN), flat."""
    flat_s = score.ravel()
    flat_c = cls.ravel()
    for i in range(flat_s.shape[0]):
        v = flat_s[i]
        k = np.uint8(v >= grow_thr) + np.uint8(v >= seed_thr)
        flat_c[i] = k if v == v else np.uint8(255)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def update_view(prev, prev_ok, prev_idx, after, after_ok, gain, offset, t, fit_ok):  # type: ignore[no-untyped-def]
    """The last valid view moved to date ``t``, in place (see ``fastcore.update_last_view``)."""
    nb, ny, nx = prev.shape
    for r in range(ny):
        a_ok = after_ok[r]
        for b in range(nb):
            g, o = gain[b], offset[b]
            pr, ar = prev[b, r], after[b, r]
            for x in range(nx):
                av, carried = ar[x], pr[x] * g + o
                pr[x] = av if a_ok[x] & fit_ok else carried
        for x in range(nx):
            if a_ok[x] & fit_ok:
                prev_idx[r, x] = t
                prev_ok[r, x] = True
