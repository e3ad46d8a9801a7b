"""Compiled (numba) loops of the per-pixel multi-date statistics; private, see
:mod:`pipeline.kernels.detect.multidate` for the math and its ``engine="numba"`` dispatch.

Each loop takes whole (T, B, y, x) blocks (every date of a spatial window, C-contiguous) and
writes what the numpy functions of :mod:`pipeline.kernels.detect.multidate` write
(``_series_noise_np``, ``_excursion_np``, ``_series_change_np``), with the same float32
operations in the same order: the results are the same bits.

Layout: a row is cut into tiles of :data:`TILE` pixels ("lanes"); the loops run over the dates
in time order with a small per-lane state (the last valid observation, counts of valid dates),
and every innermost loop runs over the lanes of a tile with no dependence between them and
selects instead of branches, so LLVM vectorises it. Nothing is
gathered into per-pixel rank order: a pixel's "ranks" (its valid dates in time order) are
walked in date order, forward for what depends on the past and backward for what depends on
the future, and per-lane scratch stays in cache.

- :func:`noise_rows`: consecutive differences (one slot per date, +inf where there is none),
  sorted per lane by a sorting network (integer ``min``/``max`` over lanes, on keys that order
  as the floats do: :func:`_sort_keys`), then the trimmed sum of the smallest ones in ascending
  order and the median slope, as ``numpy.sort`` + ``cumsum`` give them.
- :func:`excursion_rows`: a forward pass (step from the last valid observation), a backward
  pass (step to the next one), both with selects.
- :func:`change_rows`: a forward pass (each date's three window terms, kept for the tile, and
  the before-window sums) and a backward pass (the after-window sums and the statistic). A
  window is marked per date and lane by the count of valid dates before each date: the ``rc``
  valid dates nearest to the break on its side, where ``rc`` (at most ``window``) restarts at
  a strong break. The sums walk the dates outward from the break, nearest first, and add +0.0
  for a date outside the window: the same operation as the masked sum of the numpy path
  (which starts at +0.0 and is never -0.0), so the same bits, with nothing shifted. The
  greedy multi-break re-pass runs only for the pixels of a row with a break above the
  threshold, gathered into one tile.

Where a lane keeps its old value or takes a new one (``dst = src if ok else dst``), the bits are
moved through int32 views and masks (:func:`_merge`): written as a float select of two loads,
LLVM turns it into one load from a selected address and leaves the loop scalar (the noise
estimate and the step test took about twice as long). Per-lane flags are int32 masks (-1 or 0)
and counts int32 or float32, never bool or int64 beside float32 data: a loop mixing lane
widths is widened and packed, or left scalar (the noise estimate and the excursion with its
baseline took twice as long). Scratch rows are :data:`PAD` lanes longer than a tile, so no
two of them sit a multiple of 4 KiB apart.

No fast-math (NaN tests and the order of float32 sums must stay exact). Every function
releases the GIL and is cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE = 2048
"""Pixels (lanes) of a row processed together."""

F0 = np.float32(0.0)
F1 = np.float32(1.0)
HALF = np.float32(0.5)
TWO = np.float32(2.0)
NAN32 = np.float32(np.nan)
INF32 = np.float32(np.inf)

NO_DATE = np.int32(2**30)
"""A bound no count of valid dates reaches (an empty before-window)."""

SORT_LANES = 256
"""Lanes sorted together: their slots (up to 29 rows of 1 KiB at 30 dates) stay in the L1
cache through the whole network."""

PAD = 16
"""Extra lanes of every scratch row: row strides a multiple of 4 KiB make loads wait on
unrelated stores (4K aliasing); 64 bytes more keeps consecutive rows apart."""


@njit(nogil=True, cache=True, error_model="numpy")
def _merge(dst, src, mask, w):  # type: ignore[no-untyped-def]
    """``dst[:w] = where(mask, src, dst)`` on int32 views of float32 rows; ``mask`` int32,
    -1 (take ``src``) or 0.

    The bits are copied unchanged. Written with integer masks because LLVM turns a float
    ``src[i] if ok[i] else dst[i]`` into a load from a selected address, which it cannot
    vectorise (a scalar loop: noise and the step test ran about twice as long).
    """
    for i in range(w):
        a = src[i]
        c = dst[i]
        m = mask[i]
        dst[i] = (a & m) | (c & ~m)


def sorting_network(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort of ``n`` values.

    Built for the next power of two and pruned of every comparator reaching past ``n`` (the
    padding would be +inf, which such a comparator never moves).
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])


@njit(nogil=True, cache=True, error_model="numpy")
def _sort_keys(keys, net_i, net_j, w):  # type: ignore[no-untyped-def]
    """Sort ``keys[:, :w]`` (slots, lanes; int32) along the slots by the network
    ``(net_i, net_j)``: each comparator puts the smaller key in the lower slot (integer
    ``min``/``max``, which LLVM vectorises)."""
    for i0 in range(0, w, SORT_LANES):
        i1 = min(i0 + SORT_LANES, w)
        for c in range(net_i.shape[0]):
            # views from lane 0, so indices are known non-negative (else numba's wraparound
            # test leaves the loop scalar)
            lo = keys[net_i[c], i0:i1]
            hi = keys[net_j[c], i0:i1]
            for i in range(i1 - i0):
                u = lo[i]
                v = hi[i]
                lo[i] = min(u, v)
                hi[i] = max(u, v)


@njit(nogil=True, cache=True, error_model="numpy")
def _flip_negative(keys, w):  # type: ignore[no-untyped-def]
    """Float32 bits <-> int32 keys in the same order (its own inverse): a negative float's
    bits, read as an int32, grow with its magnitude, so they are flipped but for the sign.
    ``-0.0`` gets the key just below ``+0.0``'s."""
    for s in range(keys.shape[0]):
        row = keys[s]
        for i in range(w):
            b = row[i]
            row[i] = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))


@njit(nogil=True, cache=True, error_model="numpy")
def noise_rows(  # type: ignore[no-untyped-def]
    z, valid, t_units, keep_tab, factor_tab, min_dt, min_obs, net_i, net_j, out, r0, r1
):
    """Rows ``r0:r1`` of ``_series_noise_np``: ``out[0]`` noise, ``out[1]`` slope (B, y, x).

    ``t_len >= 2``. Slot ``t - 1`` of a lane holds the difference ending at date ``t`` (its
    observation minus the previous valid one), +inf where there is none; sorted, the slots are
    numpy's sorted differences with NaN (as +inf) last.
    """
    t_len, n_bands, _, nx = z.shape
    m = t_len - 1
    L = TILE
    pz = np.zeros((n_bands, L + PAD), np.float32)
    pt = np.zeros(L, np.float32)
    has = np.zeros(L, np.int32)
    n = np.zeros(L, np.int32)
    use_mask = np.zeros(L, np.int32)
    sl = np.empty((n_bands, m, L + PAD), np.float32)
    sq = np.empty((n_bands, m, L + PAD), np.float32)
    sl_bits = sl.view(np.int32)
    sq_bits = sq.view(np.int32)
    ok_mask = np.empty(L, np.int32)
    pz_bits = pz.view(np.int32)
    z_bits = z.view(np.int32)
    cnt = np.zeros((n_bands, L), np.int32)
    dt = np.empty(L, np.float32)
    total = np.empty(L, np.float32)
    last = np.empty(L, np.int32)
    kept = np.empty(L, np.float64)
    fac = np.empty(L, np.float64)
    enough = np.empty(L, np.int32)
    for y in range(r0, r1):
        for x0 in range(0, nx, L):
            w = min(L, nx - x0)
            for i in range(w):
                has[i] = 0
                n[i] = 0
            for b in range(n_bands):
                for i in range(w):
                    cnt[b, i] = 0
                    pz[b, i] = F0
            for t in range(t_len):
                tt = t_units[t]
                okr = valid[t, y, x0 : x0 + w]
                for i in range(w):
                    mk = -np.int32(okr[i])
                    ok_mask[i] = mk
                    use_mask[i] = mk & has[i]
                    d = tt - pt[i]
                    dt[i] = d if d >= min_dt else min_dt
                for b in range(n_bands):
                    zr = z[t, b, y, x0 : x0 + w]
                    pzb = pz[b]
                    cb = cnt[b]
                    if t >= 1:
                        slb = sl[b, t - 1]
                        sqb = sq[b, t - 1]
                        for i in range(w):
                            d = zr[i] - pzb[i]
                            s = d / dt[i]
                            q = d * d / TWO
                            use = use_mask[i] != 0
                            s_ok = use & (s == s)
                            slb[i] = s if s_ok else INF32
                            sqb[i] = q if use & (q == q) else INF32
                            cb[i] += np.int32(1) if s_ok else np.int32(0)
                    _merge(pz_bits[b], z_bits[t, b, y, x0 : x0 + w], ok_mask, w)
                for i in range(w):
                    mk = ok_mask[i]
                    pt[i] = tt if mk != 0 else pt[i]
                    has[i] = has[i] | mk
                    n[i] -= mk
            for i in range(w):
                nd = max(n[i] - 1, 0)
                last[i] = np.int32(min(max(keep_tab[nd] - 1, 0), m - 1))
                kept[i] = np.float64(max(keep_tab[nd], 1))
                fac[i] = factor_tab[nd]
                enough[i] = -np.int32(n[i] >= min_obs)
            for b in range(n_bands):
                # squared differences are +0.0 or more (or +inf): their bits sort as int32
                _sort_keys(sq_bits[b], net_i, net_j, w)
                _flip_negative(sl_bits[b], w)
                _sort_keys(sl_bits[b], net_i, net_j, w)
                _flip_negative(sl_bits[b], w)
                for i in range(w):
                    total[i] = F0
                for k in range(m):
                    sqk = sq[b, k]
                    kk = np.int32(k)
                    for i in range(w):
                        v = sqk[i]
                        total[i] = total[i] + (v if (kk <= last[i]) & (v < INF32) else F0)
                # the noise in a loop of its own, without per-lane table lookups, is vectorised
                noise_row = out[0, b, y, x0 : x0 + w]
                for i in range(w):
                    noise = np.sqrt(np.float64(total[i]) / kept[i] / fac[i])
                    noise_row[i] = np.float32(noise) if enough[i] != 0 else NAN32
                slope_row = out[1, b, y, x0 : x0 + w]
                for i in range(w):
                    c = cnt[b, i]
                    if c > 0:
                        lo = sl[b, max((c - 1) // 2, 0), i]
                        hi = sl[b, min(c // 2, m - 1), i]
                        slope = (lo + hi) / TWO
                    else:
                        slope = NAN32
                    slope_row[i] = slope if enough[i] != 0 else F0


@njit(nogil=True, cache=True, error_model="numpy")
def excursion_rows(z, valid, var, with_base, stat, two, base, r0, r1):  # type: ignore[no-untyped-def]
    """Rows ``r0:r1`` of ``_excursion_np``: ``stat`` (T, y, x) float32, ``two`` (T, y, x)
    bool, ``base`` (T, B, y, x) float32 (neither read nor written unless ``with_base``).

    Forward pass: ``stat`` holds the step from the previous valid observation (NaN: none),
    ``base`` the previous observation, ``two`` whether there is one. Backward pass: the step to
    the next valid observation, and the final values.
    """
    t_len, n_bands, _, nx = z.shape
    L = TILE
    carry = np.empty(L, np.float32)
    pz = np.zeros((n_bands, L + PAD), np.float32)
    pv = np.zeros((n_bands, L + PAD), np.float32)
    pz_bits = pz.view(np.int32)
    pv_bits = pv.view(np.int32)
    z_bits = z.view(np.int32)
    stat_bits = stat.view(np.int32)
    var_bits = var.view(np.int32)
    ok_mask = np.empty(L, np.int32)
    step = np.empty(L, np.float32)
    carry_bits = carry.view(np.int32)
    acc = np.empty(L, np.float32)
    # per-lane flags as int32 masks (-1 true, 0 false) and counts as int32: lanes of one width
    # with the float32 data, so LLVM vectorises the loops without widening and packing
    has = np.zeros(L, np.int32)
    n = np.zeros(L, np.int32)
    tw = np.zeros(L, np.int32)
    first = np.zeros(L, np.int32)
    for y in range(r0, r1):
        for x0 in range(0, nx, L):
            w = min(L, nx - x0)
            for i in range(w):
                has[i] = 0
                n[i] = 0
            for b in range(n_bands):
                for i in range(w):
                    pz[b, i] = F0
                    pv[b, i] = F0
            for t in range(t_len):
                okr = valid[t, y, x0 : x0 + w]
                for i in range(w):
                    ok_mask[i] = -np.int32(okr[i])
                for b in range(n_bands):
                    zr = z[t, b, y, x0 : x0 + w]
                    vr = var[t, b, y, x0 : x0 + w]
                    pzb = pz[b]
                    pvb = pv[b]
                    for i in range(w):
                        dz = zr[i] - pzb[i]
                        term = dz * dz / (vr[i] + pvb[i])
                        acc[i] = term if b == 0 else acc[i] + term
                    if with_base:
                        br = base[t, b, y, x0 : x0 + w]
                        for i in range(w):
                            br[i] = pzb[i] if ok_mask[i] != 0 else NAN32
                    _merge(pz_bits[b], z_bits[t, b, y, x0 : x0 + w], ok_mask, w)
                    _merge(pv_bits[b], var_bits[t, b, y, x0 : x0 + w], ok_mask, w)
                sr = stat[t, y, x0 : x0 + w]
                twr = two[t, y, x0 : x0 + w]
                for i in range(w):
                    mk = ok_mask[i]
                    both = (mk & has[i]) != 0
                    sr[i] = acc[i] if both else NAN32
                    twr[i] = both
                    has[i] = has[i] | mk
                    n[i] -= mk
            # backward: pz now holds the next valid observation
            for i in range(w):
                carry[i] = NAN32
            for t in range(t_len - 1, -1, -1):
                okr = valid[t, y, x0 : x0 + w]
                sr = stat[t, y, x0 : x0 + w]
                twr = two[t, y, x0 : x0 + w]
                for i in range(w):
                    o = okr[i]
                    ok_mask[i] = -np.int32(o)
                    left = sr[i]
                    right = carry[i]
                    both = (left == left) & (right == right)
                    one = right if left != left else left
                    st = (left if left <= right else right) if both else one
                    step[i] = st if o else NAN32
                    first[i] = np.int32(twr[i]) - np.int32(1)
                    tw[i] = -np.int32(both & o)
                    twr[i] = both & o
                _merge(carry_bits, stat_bits[t, y, x0 : x0 + w], ok_mask, w)
                for i in range(w):
                    sr[i] = step[i]
                if not with_base:
                    continue
                for b in range(n_bands):
                    br = base[t, b, y, x0 : x0 + w]
                    pzb = pz[b]
                    for i in range(w):
                        prev = br[i]
                        nxt = pzb[i]
                        v = (prev + nxt) * HALF if tw[i] != 0 else (nxt if first[i] != 0 else prev)
                        br[i] = v if ok_mask[i] != 0 else NAN32
                    _merge(pz_bits[b], z_bits[t, b, y, x0 : x0 + w], ok_mask, w)
            # a lone observation is compared with the first invalid date (numpy's rank 1)
            for i in range(w):
                if n[i] != 1 or not with_base:
                    continue
                tv = -1
                ti = -1
                for t in range(t_len):
                    if valid[t, y, x0 + i]:
                        tv = t
                    elif ti < 0:
                        ti = t
                src = ti if t_len > 1 else tv
                for b in range(n_bands):
                    base[tv, b, y, x0 + i] = z[src, b, y, x0 + i]


@njit(nogil=True, cache=True, error_model="numpy")
def _window_masks(cv, vm, bound, t_from, step, inc, w):  # type: ignore[no-untyped-def]
    """Mark the window dates of every lane: rows of ``inc`` (int32 masks, -1 in the window)
    from date ``t_from`` outward, by ``step`` (-1: back in time, +1: forward).

    A date is in a lane's window where it is valid (``vm``) and its count of earlier valid
    dates (``cv``) is at least (``step`` -1) or at most (``step`` +1) the lane's ``bound``.
    ``cv`` only moves away from the bounds further out, so the walk stops at the first date
    no lane's bound reaches. Returns the last date marked (``t_from - step``: none).
    """
    t_len = cv.shape[0]
    d = t_from
    while 0 <= d < t_len:
        cvd = cv[d]
        vmd = vm[d]
        incd = inc[d]
        reach = np.int32(0)
        if step < 0:
            for i in range(w):
                r = -np.int32(cvd[i] >= bound[i])
                incd[i] = vmd[i] & r
                reach = reach | r
        else:
            for i in range(w):
                r = -np.int32(cvd[i] <= bound[i])
                incd[i] = vmd[i] & r
                reach = reach | r
        if reach == 0:
            break
        d += step
    return d - step


@njit(nogil=True, cache=True, error_model="numpy")
def _window_sums(terms, inc, b, t_from, t_to, step, acc, w):  # type: ignore[no-untyped-def]
    """``acc[q, :w]`` = the sum of ``terms[q, d, b]`` over the dates ``d`` from ``t_from`` to
    ``t_to`` (by ``step``) whose ``inc[d]`` is -1, added one by one in that order (nearest
    observation first), as the numpy path adds; +0.0 for the others (the same operation as
    the masked sum: the sum starts at +0.0 and is never -0.0).

    Two dates per pass over the lanes: one store and five loads stay within LLVM's runtime
    alias checks, so the pass is vectorised.
    """
    n = (t_to - t_from) * step + 1
    for q in range(3):
        aq = acc[q]
        for i in range(w):
            aq[i] = F0
        j = 0
        while j + 2 <= n:
            d0 = t_from + step * j
            d1 = d0 + step
            u0 = terms[q, d0, b]
            u1 = terms[q, d1, b]
            m0 = inc[d0]
            m1 = inc[d1]
            for i in range(w):
                aq[i] = (aq[i] + (u0[i] if m0[i] != 0 else F0)) + (u1[i] if m1[i] != 0 else F0)
            j += 2
        if j < n:
            d0 = t_from + step * j
            u0 = terms[q, d0, b]
            m0 = inc[d0]
            for i in range(w):
                aq[i] = aq[i] + (u0[i] if m0[i] != 0 else F0)


@njit(nogil=True, cache=True, error_model="numpy")
def _change_pass(  # type: ignore[no-untyped-def]
    z,
    var,
    valid,
    slope,
    slope_var,
    t_units,
    window,
    strong,
    y,
    x0,
    w,
    scratch,
    score,
    n_before,
    n_after,
    before_index,
    mean_before,
    mean_after,
):
    """Step statistic of every break of lanes ``x0:x0 + w`` of row ``y`` (``_step_pass`` of the
    numpy path, windows bounded by ``strong`` (T, lanes)); writes the six outputs.

    ``scratch``: the tile's arrays ``(terms, vm, cv, inc, bound, count, rc, pidx, tbw, iwb,
    cur, acc)``. ``terms`` (3, T, B, lanes): each date's weight, weighted value and weighted
    time (written by the forward pass, read by both). ``vm`` (T, lanes): validity as int32
    masks; ``cv`` (T, lanes): valid dates before each date. A window is the ``rc`` (float32
    count) valid observations nearest to the break on its side: those whose ``cv`` lies
    within ``bound`` of the break's, marked in ``inc`` (T, lanes). ``pidx`` (int32): date of
    the last valid observation; ``count`` (int32): valid dates so far; ``cur`` (lanes): the
    statistic summed over bands.
    """
    terms, vm, cv, inc, bound, count, rc, pidx, tbw, iwb, cur, acc = scratch
    t_len, n_bands = z.shape[0], z.shape[1]
    fwin = np.float32(window)
    for i in range(w):
        rc[i] = F0
        pidx[i] = -1
        count[i] = 0
    for t in range(t_len):
        tt = t_units[t]
        okr = valid[t, y, x0 : x0 + w]
        vmt = vm[t]
        cvt = cv[t]
        for i in range(w):
            vmt[i] = -np.int32(okr[i])
            cvt[i] = count[i]
            # an empty window (rc 0) reaches no date: the scan stops at the last valid one
            n_in = np.int32(rc[i])
            bound[i] = count[i] - n_in if n_in > 0 else NO_DATE
        last = _window_masks(cv, vm, bound, t - 1, -1, inc, w)
        for b in range(n_bands):
            zr = z[t, b, y, x0 : x0 + w]
            vr = var[t, b, y, x0 : x0 + w]
            slr = slope[b, y, x0 : x0 + w]
            o0 = terms[0, t, b]
            o1 = terms[1, t, b]
            o2 = terms[2, t, b]
            for i in range(w):
                zs = zr[i] - slr[i] * tt
                wv = F1 / vr[i]
                o0[i] = wv
                o1[i] = zs * wv
                o2[i] = wv * tt
            _window_sums(terms, inc, b, t - 1, last, -1, acc, w)
            mbr = mean_before[t, b, y, x0 : x0 + w]
            for i in range(w):
                mbr[i] = acc[1, i] / acc[0, i] if vmt[i] != 0 else NAN32
                tbw[t, b, i] = acc[2, i] / acc[0, i]
                iwb[t, b, i] = F1 / acc[0, i]
        nbr = n_before[t, y, x0 : x0 + w]
        bir = before_index[t, y, x0 : x0 + w]
        st = strong[t]
        for i in range(w):
            o = vmt[i] != 0
            nbr[i] = rc[i] if o else F0
            bir[i] = np.int16(pidx[i]) if o else np.int16(-1)
            r = F0 if st[i] else rc[i]
            r = min(r + F1, fwin)
            rc[i] = r if o else rc[i]
            pidx[i] = np.int32(t) if o else pidx[i]
            count[i] -= vmt[i]
    for i in range(w):
        rc[i] = F0
    for t in range(t_len - 1, -1, -1):
        vmt = vm[t]
        cvt = cv[t]
        for i in range(w):
            r = min(rc[i] + F1, fwin)
            rc[i] = r if vmt[i] != 0 else rc[i]
            bound[i] = cvt[i] + np.int32(rc[i]) - np.int32(1)
        last = _window_masks(cv, vm, bound, t, 1, inc, w)
        for b in range(n_bands):
            svr = slope_var[b, y, x0 : x0 + w]
            _window_sums(terms, inc, b, t, last, 1, acc, w)
            mbr = mean_before[t, b, y, x0 : x0 + w]
            mar = mean_after[t, b, y, x0 : x0 + w]
            for i in range(w):
                wa = acc[0, i]
                ma = acc[1, i] / wa
                gap = acc[2, i] / wa - tbw[t, b, i]
                v = F1 / wa + iwb[t, b, i] + gap * gap * svr[i]
                d = ma - mbr[i]
                term = d * d / v
                cur[i] = term if b == 0 else cur[i] + term
                mar[i] = ma if vmt[i] != 0 else NAN32
        scr = score[t, y, x0 : x0 + w]
        nbr = n_before[t, y, x0 : x0 + w]
        nar = n_after[t, y, x0 : x0 + w]
        bir = before_index[t, y, x0 : x0 + w]
        st = strong[t]
        for i in range(w):
            o = vmt[i] != 0
            na = rc[i]
            good = o & (bir[i] >= 0) & (nbr[i] > F0) & (na > F0)
            scr[i] = cur[i] if good else NAN32
            nar[i] = na if o else F0
            rc[i] = F0 if o & st[i] else rc[i]


@njit(nogil=True, cache=True, error_model="numpy")
def change_rows(  # type: ignore[no-untyped-def]
    z,
    var,
    valid,
    slope,
    slope_var,
    t_units,
    window,
    threshold,
    max_changes,
    score,
    n_before,
    n_after,
    before_index,
    mean_before,
    mean_after,
    r0,
    r1,
):
    """Rows ``r0:r1`` of ``_series_change_np`` (windows of at most ``window`` >= 1 dates;
    ``threshold`` float32). Outputs: ``score``, ``n_before``, ``n_after`` (T, y, x) float32,
    ``before_index`` (T, y, x) int16, ``mean_before``, ``mean_after`` (T, B, y, x) float32."""
    t_len, n_bands, _, nx = z.shape
    L = TILE
    LP = L + PAD
    terms = np.zeros((3, t_len, n_bands, LP), np.float32)
    vm = np.zeros((t_len, LP), np.int32)
    cv = np.zeros((t_len, LP), np.int32)
    inc = np.zeros((t_len, LP), np.int32)
    bound = np.zeros(LP, np.int32)
    count = np.zeros(LP, np.int32)
    rc = np.zeros(L, np.float32)
    pidx = np.zeros(L, np.int32)
    tbw = np.empty((t_len, n_bands, LP), np.float32)
    iwb = np.empty((t_len, n_bands, LP), np.float32)
    cur = np.empty(LP, np.float32)
    acc = np.empty((3, LP), np.float32)
    # the pass's scratch, one tuple for both of its calls
    scratch = (terms, vm, cv, inc, bound, count, rc, pidx, tbw, iwb, cur, acc)
    strong = np.zeros((t_len, L), np.bool_)
    busy = np.empty(nx, np.int64)
    hit = np.zeros(L, np.bool_)
    # gathered lanes of the greedy re-pass: inputs and outputs as one row of width L
    g_z = np.zeros((t_len, n_bands, 1, L), np.float32)
    g_var = np.ones((t_len, n_bands, 1, L), np.float32)
    g_ok = np.zeros((t_len, 1, L), np.bool_)
    g_slope = np.zeros((n_bands, 1, L), np.float32)
    g_sv = np.zeros((n_bands, 1, L), np.float32)
    g_score = np.empty((t_len, 1, L), np.float32)
    g_nb = np.empty((t_len, 1, L), np.float32)
    g_na = np.empty((t_len, 1, L), np.float32)
    g_bi = np.empty((t_len, 1, L), np.int16)
    g_mb = np.empty((t_len, n_bands, 1, L), np.float32)
    g_ma = np.empty((t_len, n_bands, 1, L), np.float32)
    # row and lane 0 of the gathered arrays, typed int64 as ``y`` and ``x0`` of the first call
    # (a literal 0 would make numba compile ``_change_pass`` a second time, about 8 s)
    origin = np.int64(0)
    for y in range(r0, r1):
        n_busy = 0
        for x0 in range(0, nx, L):
            w = min(L, nx - x0)
            strong[:, :w] = False
            _change_pass(
                z,
                var,
                valid,
                slope,
                slope_var,
                t_units,
                window,
                strong,
                y,
                x0,
                w,
                scratch,
                score,
                n_before,
                n_after,
                before_index,
                mean_before,
                mean_after,
            )
            for i in range(w):
                hit[i] = False
            for t in range(t_len):
                scr = score[t, y, x0 : x0 + w]
                for i in range(w):
                    hit[i] = hit[i] | (scr[i] >= threshold)
            for i in range(w):
                if hit[i]:
                    busy[n_busy] = x0 + i
                    n_busy += 1
        for c0 in range(0, n_busy, L):
            w = min(L, n_busy - c0)
            for i in range(w):
                x = busy[c0 + i]
                for t in range(t_len):
                    g_ok[t, 0, i] = valid[t, y, x]
                    g_score[t, 0, i] = score[t, y, x]
                    strong[t, i] = False
                    for b in range(n_bands):
                        g_z[t, b, 0, i] = z[t, b, y, x]
                        g_var[t, b, 0, i] = var[t, b, y, x]
                for b in range(n_bands):
                    g_slope[b, 0, i] = slope[b, y, x]
                    g_sv[b, 0, i] = slope_var[b, y, x]
            for _ in range(max_changes):
                added = False
                for i in range(w):
                    best = -1
                    best_g = -INF32
                    for t in range(t_len):
                        c = g_score[t, 0, i]
                        if not strong[t, i] and c == c and c > best_g:
                            best_g = c
                            best = t
                    if best >= 0 and best_g >= threshold:
                        strong[best, i] = True
                        added = True
                if not added:
                    break
                _change_pass(
                    g_z,
                    g_var,
                    g_ok,
                    g_slope,
                    g_sv,
                    t_units,
                    window,
                    strong,
                    origin,
                    origin,
                    w,
                    scratch,
                    g_score,
                    g_nb,
                    g_na,
                    g_bi,
                    g_mb,
                    g_ma,
                )
                for i in range(w):
                    x = busy[c0 + i]
                    for t in range(t_len):
                        score[t, y, x] = g_score[t, 0, i]
                        n_before[t, y, x] = g_nb[t, 0, i]
                        n_after[t, y, x] = g_na[t, 0, i]
                        before_index[t, y, x] = g_bi[t, 0, i]
                        for b in range(n_bands):
                            mean_before[t, b, y, x] = g_mb[t, b, 0, i]
                            mean_after[t, b, y, x] = g_ma[t, b, 0, i]
