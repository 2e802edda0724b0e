"""Polishing: exact solves of SUnSAL's problem on a guessed support, certified by the KKT conditions.

At a check, the support (and, without ANC, the signs) of ADMM's ``z`` is taken as a guess of the
optimal active set; the equality-constrained least-squares problem on that support is solved exactly
(a precomputed ``(k+1) x (k+1)`` inverse per support) and accepted if it satisfies the KKT conditions
of the full problem to rounding. Such a pixel stops with the exact optimum (in the working precision);
ADMM's job is only to find the active set. This is the solution-polishing step of OSQP (Stellato et
al., 2020) applied per pixel.

Parameters come from a ``(n_par, base^R)`` table indexed by the support code itself (``index_select``;
a single broadcast column and one ``addmm`` when every pixel has the same pattern); masks are applied
by multiplying with 0/1 (``torch.where``/``masked_fill`` were 5-10x slower per element here).
"""

from __future__ import annotations

import threading

import torch

_MAX_POLISH_GROUPS = 64  # at most this many distinct supports are polished per check (large R only)
TABLE_MAX_CODES = 4096  # up to this many support codes (base^R): a direct table instead of unique()


_POLISHERS: dict[tuple[bytes, float, bool, bool, torch.dtype, str], Polisher] = {}
_POLISHERS_LOCK = threading.Lock()


def get_polisher(G64: torch.Tensor, lam: float, anc: bool, asc: bool, dtype: torch.dtype) -> Polisher:
    """A :class:`Polisher`, shared between calls with the same problem (e.g. the blocks of one cube)."""
    key = (G64.cpu().numpy().tobytes(), lam, anc, asc, dtype, str(G64.device))
    with _POLISHERS_LOCK:
        pol = _POLISHERS.get(key)
        if pol is None:
            if len(_POLISHERS) >= 16:
                _POLISHERS.pop(next(iter(_POLISHERS)))
            pol = _POLISHERS[key] = Polisher(G64, lam, anc, asc, dtype)
    return pol


class Polisher:
    """Exact solves on guessed supports, with a KKT certificate (see module notes).

    Every support (and, without ANC, sign pattern) ``S`` met so far has a cached column of parameters:
    the zero-padded ``R x R`` matrix ``M_S`` and vectors such that ``x = M_S (b + shift_S) + c_S`` and the
    ASC multiplier ``nu = a_S . (b + shift_S) + c_nu``. A call gathers each pixel's column by its support
    code and evaluates all pixels with elementwise operations (no per-group gather/scatter).
    """

    def __init__(self, G64: torch.Tensor, lam: float, anc: bool, asc: bool, dtype: torch.dtype) -> None:
        self.G64 = G64
        self.G = G64.to(dtype)
        self.R = R = G64.shape[0]
        self.lam, self.anc, self.asc, self.dtype = lam, anc, asc, dtype
        self.cache: dict[int, torch.Tensor] = {}
        self.eps = float(torch.finfo(dtype).eps)
        dev = G64.device
        self.base = 2 if anc else 3
        self.pow = (self.base ** torch.arange(R, device=dev)).unsqueeze(1)  # (R, 1)
        self.n_par = R * R + 4 * R + 2  # M, c, shift, a, support, c_nu, valid
        # Small problems (base^R codes, e.g. 32 for FCLS with 5 endmembers): one (n_par, base^R) table
        # indexed by the code itself, its columns filled on first use, gathered with index_select.
        n_codes = self.base ** R
        self.table: torch.Tensor | None = None
        if n_codes <= TABLE_MAX_CODES:
            # a normal tensor even when first built under torch.inference_mode (DEQ's FCLS start): the
            # polisher is shared between calls, and an inference tensor cannot be updated outside it
            with torch.inference_mode(False):
                self.table = torch.zeros((self.n_par, n_codes), dtype=dtype, device=dev)
            self.filled = torch.zeros(n_codes, dtype=torch.bool)
            self.powf = (self.base ** torch.arange(R, device=dev)).to(dtype).unsqueeze(0)  # (1, R)
            self.lock = threading.Lock()

    def _column(self, code: int) -> torch.Tensor:
        """Parameter column (n_par,) of the support/sign pattern ``code``; ``valid = 0`` if unusable."""
        R, dev = self.R, self.G64.device
        S, signs, cc = [], [], code
        for j in range(R):
            digit = cc % self.base
            cc //= self.base
            if digit:
                S.append(j)
                signs.append(1.0 if digit == 1 else -1.0)
        col = torch.zeros(self.n_par, dtype=torch.float64, device=dev)
        k = len(S)
        if self.asc and not k:
            return col.to(self.dtype)  # infeasible: valid = 0
        Gs = self.G64[S][:, S]
        if self.asc:
            K = torch.zeros((k + 1, k + 1), dtype=torch.float64, device=dev)
            K[:k, :k] = Gs
            K[:k, k] = 1.0
            K[k, :k] = 1.0
        else:
            K = Gs
        if k and float(torch.linalg.cond(K)) > 1e12:
            return col.to(self.dtype)
        M = torch.linalg.inv(K) if k else K
        Si = torch.tensor(S, dtype=torch.long, device=dev)
        Mp = torch.zeros((R, R), dtype=torch.float64, device=dev)
        cp = torch.zeros(R, dtype=torch.float64, device=dev)
        sh = torch.zeros(R, dtype=torch.float64, device=dev)
        ap = torch.zeros(R, dtype=torch.float64, device=dev)
        if k:
            Mp[Si.unsqueeze(1), Si.unsqueeze(0)] = M[:k, :k]
            sh[Si] = -self.lam * torch.tensor(signs, dtype=torch.float64, device=dev)
            if self.asc:
                cp[Si] = M[:k, k]
                ap[Si] = M[k, :k]
        c_nu = float(M[k, k]) if self.asc else 0.0
        col[: R * R] = Mp.reshape(-1)
        col[R * R: R * R + R] = cp
        col[R * R + R: R * R + 2 * R] = sh
        col[R * R + 2 * R: R * R + 3 * R] = ap
        col[R * R + 3 * R: R * R + 4 * R][Si] = 1.0
        col[-2] = c_nu
        col[-1] = 1.0
        return col.to(self.dtype)

    def _params(self, pattern: torch.Tensor) -> torch.Tensor:
        """Parameter columns (n_par, m) for the support/sign patterns of ``pattern`` (R, m); (n_par, 1)
        when every pixel has the same pattern."""
        R, m = pattern.shape
        if self.table is not None:
            ind = (pattern > 0).to(self.dtype)
            if not self.anc:
                ind += 2 * (pattern < 0).to(self.dtype)
            code = (self.powf @ ind)[0].to(torch.int64)  # exact: codes < 2^24
            seen = torch.bincount(code, minlength=self.table.shape[1]).cpu() > 0
            new = (seen & ~self.filled).nonzero()[:, 0].tolist()
            if new:
                with self.lock:
                    for c in new:
                        if not bool(self.filled[c]):
                            self.table[:, c] = self._column(c)
                            self.filled[c] = True
            if int(seen.sum()) == 1:  # one pattern for all (e.g. the first guess): a broadcast column
                c0 = int(code[0])
                return self.table[:, c0:c0 + 1]
            return self.table.index_select(1, code)
        if self.anc:
            code = ((pattern > 0).to(torch.int64) * self.pow).sum(0)
        else:
            code = (((pattern > 0).to(torch.int64) + 2 * (pattern < 0).to(torch.int64)) * self.pow).sum(0)
        codes, inv, counts = torch.unique(code, return_inverse=True, return_counts=True)
        cl = codes.tolist()
        if len(cl) == 1:
            if cl[0] not in self.cache:
                self.cache[cl[0]] = self._column(cl[0])
            return self.cache[cl[0]].unsqueeze(1)
        keep = None
        if len(cl) > _MAX_POLISH_GROUPS:  # only the most frequent patterns
            keep = set(torch.argsort(counts, descending=True)[:_MAX_POLISH_GROUPS].tolist())
        cols = []
        for i, c in enumerate(cl):
            if keep is not None and i not in keep:
                cols.append(torch.zeros(self.n_par, dtype=self.dtype, device=pattern.device))
                continue
            if c not in self.cache:
                self.cache[c] = self._column(c)
            cols.append(self.cache[c])
        return torch.stack(cols, 1).index_select(1, inv)  # (n_par, m)

    def _solve(self, b: torch.Tensor, pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
        """Exact solve on the support/signs of ``pattern`` (R, m). Returns x, ok, g (KKT gradient), tol.

        Masks are applied by multiplying with 0/1 floats rather than ``torch.where`` (several times faster
        on CPU here); every quantity involved is finite (an unusable support has M = 0, c = 0).
        """
        R, m = b.shape
        P = self._params(pattern)
        RR = R * R
        q = b + P[RR + R: RR + 2 * R] if self.lam else b
        if P.shape[1] == 1:  # one support for all: x = M q + c as one product
            x = torch.addmm(P[RR: RR + R], P[:RR, 0].view(R, R), q)
        else:
            x = P[RR: RR + R].clone()
            Pm = P[:RR].view(R, R, m)
            for j in range(R):  # x += M[:, j] q_j, pixel by pixel
                x.addcmul_(Pm[:, j], q[j])
        valid = P[-1] > 0
        # KKT: g = G x - b + nu 1; on the support g + lam sign(x) = 0 by construction
        g = self.G @ x - b
        if self.asc:
            g += (P[RR + 2 * R: RR + 3 * R] * q).sum(0) + P[-2]
        tol = (16 * self.eps) * (1.0 + b.abs().amax(0) + self.lam)
        on = P[RR + 3 * R: RR + 4 * R]  # the solved support, 0/1
        off = 1.0 - on
        x = x * on
        if self.anc:
            sg = on
            ok_x = x.amin(0) >= -tol
            ok_g = ((g + self.lam) * off).amin(0) >= -tol
        else:
            sg = torch.sign(pattern) * on
            ok_x = (x * sg).amin(0) >= -tol
            ok_g = ((g.abs() - self.lam) * off).amax(0) <= tol
        # the support equations themselves (guards against an ill-conditioned solve)
        res_on = ((g + self.lam * sg).abs() * on).amax(0)
        ok = valid & ok_x & ok_g & (res_on <= 64 * tol)
        return x, ok, g, tol

    def __call__(self, b: torch.Tensor, z: torch.Tensor, rounds: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """Polish every column. b, z: (R, m). Returns (x (R, m), ok (m,) bool).

        The support of ``z`` is the first guess; a pixel whose guess fails the KKT test gets up to
        ``rounds`` primal-dual active-set corrections (drop the entries of the wrong sign, add the
        entries whose gradient violates the KKT conditions) before it is given back to ADMM.
        """
        x, ok, g, tol = self._solve(b, z)
        for _ in range(rounds):
            bad = (~ok).nonzero()[:, 0]
            if bad.numel() == 0:
                break
            xb, gb, tb = x[:, bad], g[:, bad], tol[bad]
            if self.anc:
                pat = ((xb > tb) | ((xb == 0) & (gb + self.lam < -tb))).to(b.dtype)
            else:
                pat = torch.where(xb.abs() > tb, torch.sign(xb), 0)
                pat = torch.where((xb == 0) & (gb > self.lam + tb), -1.0, pat)
                pat = torch.where((xb == 0) & (gb < -self.lam - tb), 1.0, pat).to(b.dtype)
            x2, ok2, g2, _ = self._solve(b[:, bad], pat)
            x[:, bad], ok[bad], g[:, bad] = x2, ok2, g2
        if self.anc:
            x.clamp_min_(0)
        return x, ok
