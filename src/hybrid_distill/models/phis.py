"""Per-teacher target normalisation: PHI-S or per-channel standardisation, with statistics from the first
batches.

PHI-S (Ranzinger et al. 2024, "PHI-S: Distribution Balancing for Label-Free Multi-Teacher Distillation",
arXiv 2410.01680, section 2): with the teacher's mean mu and covariance Sigma = U diag(lambda) U^T over
its target tokens, and H a normalised Hadamard matrix (entries +-1/sqrt(C), H H^T = I),

    x' = H U^T (x - mu) / alpha,   alpha = sqrt(tr(Sigma) / C) = sqrt(mean eigenvalue).

H U^T is a rotation, so the covariance of x' is H diag(lambda) H^T / alpha^2, whose diagonal is
sum_j H_ij^2 lambda_j / alpha^2 = mean(lambda) / alpha^2 = 1 in every channel: one scale per teacher
makes every dimension unit variance (isotropic standardisation), and the transform stays invertible
however low the rank of Sigma. `standard` is the paper's per-channel baseline: (x - mu) / sigma_c.

Statistics: population mean and covariance (over n, not n - 1) of every target token (CLS and kept
patches alike) of the first STAT_BATCHES batches, summed across ranks; each of those batches is
normalised with the statistics seen so far (itself included), later batches with the frozen ones. The
sums and the transform are buffers: a checkpoint holding them resumes exactly.
"""

import math

import torch
import torch.distributed as dist
from torch import nn

STAT_BATCHES = 10  # e.g. 10 x 64 images x (1 + 66) tokens = 43k token vectors on the demo


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % p for p in range(2, math.isqrt(q) + 1))


def _paley(q: int) -> torch.Tensor:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4), from the
    Jacobsthal matrix Q_ij = chi(j - i) (chi: the quadratic character mod q)."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]  # (q, q), skew-symmetric since q = 3 mod 4
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal
    return s + torch.eye(q + 1, dtype=torch.float64)


def hadamard(dim: int) -> torch.Tensor:
    """Normalised Hadamard matrix (dim, dim), H H^T = I, float64: Sylvester's 2^k, or 2^k x Paley's
    q + 1 (Kronecker product), which covers ViT widths 192, 384, 768, 1024, 1152, 1280, 1536."""
    power = 1
    while dim % (2 * power) == 0:
        power *= 2
    rest = dim // power
    base = 1
    while base <= power:  # the odd part times a power of two must be 1 or q + 1, q a prime = 3 (mod 4)
        q = rest * base - 1
        if rest * base == 1 or (_is_prime(q) and q % 4 == 3):
            core = torch.ones(1, 1, dtype=torch.float64) if rest * base == 1 else _paley(q)
            sylvester = torch.ones(1, 1, dtype=torch.float64)
            while sylvester.shape[0] < power // base:
                sylvester = torch.cat([torch.cat([sylvester, sylvester], 1), torch.cat([sylvester, -sylvester], 1)])
            return torch.kron(sylvester, core) / math.sqrt(dim)
        base *= 2
    raise ValueError(
        f"no Hadamard matrix of order {dim} is built here (orders 2^k and 2^k (q + 1), q a prime = 3 mod 4); "
        "use normalize=standard for this teacher"
    )


def principal_axes(cov: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of cov as columns, by decreasing eigenvalue, each signed so its largest entry is
    positive: one U for one Sigma (eigh's signs and order are otherwise arbitrary)."""
    values, vectors = torch.linalg.eigh(cov)
    vectors = vectors[:, values.argsort(descending=True)]
    largest = vectors.gather(0, vectors.abs().argmax(0, keepdim=True))
    return vectors * largest.sign()


def phis_matrix(cov: torch.Tensor) -> torch.Tensor:
    """W with x' = W (x - mu): H U^T / alpha (module docstring)."""
    alpha = (cov.trace() / cov.shape[0]).clamp_min(1e-12).sqrt()
    return hadamard(cov.shape[0]).to(cov) @ principal_axes(cov).T / alpha


def standard_matrix(cov: torch.Tensor) -> torch.Tensor:
    """W = diag(1 / sigma_c): each channel standardised on its own (PHI-S's 'standardization' baseline)."""
    return torch.diag(cov.diagonal().clamp_min(1e-12).rsqrt())


MATRICES = {"phis": phis_matrix, "standard": standard_matrix}


class TargetNormalizer(nn.Module):
    """(..., C) teacher targets -> W (x - mu), the statistics estimated on the first `batches` calls."""

    def __init__(self, kind: str, dim: int, batches: int = STAT_BATCHES):
        super().__init__()
        if kind == "phis":
            hadamard(dim)  # refuse a width with no Hadamard matrix before training starts
        self.kind, self.batches = kind, batches
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # batches estimated on
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))  # token vectors
        self.register_buffer("total", torch.zeros(dim, dtype=torch.float64))  # their sum
        self.register_buffer("outer", torch.zeros(dim, dim, dtype=torch.float64))  # sum of x x^T
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @property
    def estimating(self) -> bool:
        return int(self.seen) < self.batches

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch's token vectors (summed over ranks) and recompute mu and W."""
        flat = x.reshape(-1, x.shape[-1]).double()
        sums = [torch.tensor(float(flat.shape[0]), dtype=torch.float64, device=x.device), flat.sum(0), flat.T @ flat]
        if dist.is_initialized():
            for s in sums:
                dist.all_reduce(s)
        self.count += sums[0]
        self.total += sums[1]
        self.outer += sums[2]
        self.seen += 1
        mean = self.total / self.count
        cov = self.outer / self.count - torch.outer(mean, mean)
        self.mean.copy_(mean)
        self.matrix.copy_(MATRICES[self.kind](cov))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.estimating:
            self.update(x)
        return (x.float() - self.mean) @ self.matrix.T

    def scale(self) -> float:
        """The one scale alpha of PHI-S (the root mean variance for `standard`): what a teacher's targets
        are divided by, logged per teacher."""
        mean = self.total / self.count.clamp_min(1.0)
        cov_trace = (self.outer.diagonal() / self.count.clamp_min(1.0) - mean**2).sum()
        return float((cov_trace / len(mean)).clamp_min(0.0).sqrt())
