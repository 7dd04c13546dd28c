"""RAL's probabilistic-alignment math (MSRA, ``zhanglong-ustc/RAL-PRVR``), as plain functions.

Diagonal Gaussians are given by a mean ``mu`` (N, d) and an unconstrained head output ``log_sigma``
(N, d); K proxies per Gaussian come from the reparameterisation trick. Three pieces:

* ``sample_proxies``: z_k = mu + exp(log_sigma) * eps_k, eps_k ~ N(0, I) (log_sigma read as a log standard
  deviation, as the release samples; proxies are not re-normalised).
* ``proxy_matching_loss`` (L_PM, the release's ``MILNCELoss_BoF``): a bag-of-features multiple-instance
  NCE over the (B K) x (G K) dot products of all video and text proxies; a row's loss is minus the
  *mean* log-softmax over its positives (the K proxies of every matching Gaussian), averaged over rows,
  and the video->text and text->video directions are averaged.
* ``distribution_alignment_loss`` (L_DA, the release's ``KLdivergence``): prior KL of the video and text
  Gaussians plus the cross-modal KL(N_text || N_video), each summed over dimensions and averaged over
  Gaussians. Two variants:

  - ``as_released``: the release's two quirks. The prior term -1/2 sum(1 + ls - m^2 - exp(ls)) reads
    log_sigma as a log-*variance* while sampling and the cross KL read it as a log-std; and m is the
    sample mean of the K proxies instead of mu (so the loss is stochastic).
  - ``clean``: mu itself, and log_sigma read as a log-std everywhere (the reading of the sampling and of
    the cross KL, so that both variants draw the same proxies and only L_DA changes): the prior term is
    the exact KL(N(mu, exp(ls)^2) || N(0, I)) = 1/2 sum(exp(2 ls) + mu^2 - 1 - 2 ls) (VIB's prior KL,
    with PCME's log-std parametrisation).

The text side may have a different number of Gaussians than the video side (one per query instead of
one per video's query set): ``text_video[g]`` names the video of text Gaussian g, and the positives of
L_PM and the pairs of the cross KL follow it. With one text Gaussian per video in video order
(``text_video = arange(B)``), the positives are the release's Kronecker blocks ``I_B (x) 1_{KxK}``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainables.errors import InputError

DA_VARIANTS = ("as_released", "clean")


def sample_proxies(mu: torch.Tensor, log_sigma: torch.Tensor, k: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, k, d) proxies mu + exp(log_sigma) * eps; ``eps`` is drawn on ``generator``'s device (CPU by
    default) and moved, so a CPU generator seeds GPU training too."""
    device = generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn((mu.shape[0], k, mu.shape[1]), generator=generator, device=device, dtype=torch.float32)
    eps = eps.to(device=mu.device, dtype=mu.dtype)
    return mu.unsqueeze(1) + log_sigma.exp().unsqueeze(1) * eps


def bag_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -(1/|P_i|) sum_{j in P_i} log softmax_j(logits_i); rows without a positive are left
    out (a video whose queries are missing from the batch has nothing to match)."""
    log_probs = logits.log_softmax(dim=1)
    counts = positive.sum(dim=1)
    rows = counts > 0
    per_row = -torch.where(positive, log_probs, torch.zeros_like(log_probs)).sum(dim=1)
    return (per_row[rows] / counts[rows]).mean()


def proxy_matching_loss(video_proxies: torch.Tensor, text_proxies: torch.Tensor, text_video: torch.Tensor, *,
                        temperature: float = 1.0, cosine: bool = False) -> torch.Tensor:
    """L_PM of video proxies (B, K, d) and text proxies (G, K', d); ``text_video`` (G,) is the video
    (row of ``video_proxies``) of each text Gaussian.

    Logits are the dot products of all B K video and G K' text proxies divided by ``temperature``
    (released: 1, no normalisation; ``cosine`` normalises the proxies first). A video proxy's positives
    are the proxies of every text Gaussian of its video, a text proxy's are the K proxies of its video.
    """
    num_videos, k_video, dim = video_proxies.shape
    k_text = text_proxies.shape[1]
    zv, zt = video_proxies.reshape(-1, dim), text_proxies.reshape(-1, dim)
    if cosine:
        zv, zt = F.normalize(zv, dim=-1), F.normalize(zt, dim=-1)
    logits = zv @ zt.t() / temperature  # (B K, G K')
    videos = torch.arange(num_videos, device=text_video.device)
    positive = (videos[:, None] == text_video[None, :])  # (B, G)
    positive = positive.repeat_interleave(k_video, dim=0).repeat_interleave(k_text, dim=1)
    return 0.5 * (bag_nce(logits, positive) + bag_nce(logits.t(), positive.t()))


def prior_kl_as_released(mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """(N,) the release's prior term sum_d -1/2 (1 + ls - m^2 - exp(ls)): KL(N(m, exp(ls)) || N(0, I)) with
    ``log_sigma`` read as a log-variance."""
    return (-0.5 * (1.0 + log_sigma - mean.pow(2) - log_sigma.exp())).sum(dim=-1)


def prior_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """(N,) KL(N(mu, diag(exp(ls)^2)) || N(0, I)) = sum_d 1/2 (exp(2 ls) + mu^2 - 1 - 2 ls), ls a log-std."""
    return (0.5 * ((2.0 * log_sigma).exp() + mu.pow(2) - 1.0 - 2.0 * log_sigma)).sum(dim=-1)


def gaussian_kl(mu_p: torch.Tensor, log_sigma_p: torch.Tensor, mu_q: torch.Tensor,
                log_sigma_q: torch.Tensor) -> torch.Tensor:
    """(N,) KL(N_p || N_q) of diagonal Gaussians with log-stds: sum_d ls_q - ls_p + (s_p^2 + (mu_p - mu_q)^2)
    / (2 s_q^2) - 1/2 (the release's cross-modal term with p = text, q = video)."""
    inv_var_q = (-2.0 * log_sigma_q).exp()
    spread = (2.0 * log_sigma_p).exp() + (mu_p - mu_q).pow(2)
    return (log_sigma_q - log_sigma_p + 0.5 * spread * inv_var_q - 0.5).sum(dim=-1)


def distribution_alignment_loss(
    video_mu: torch.Tensor, video_log_sigma: torch.Tensor, video_proxies: torch.Tensor,
    text_mu: torch.Tensor, text_log_sigma: torch.Tensor, text_proxies: torch.Tensor, text_video: torch.Tensor,
    *, variant: str = "as_released", prior: bool = True, cross: bool = True,
) -> torch.Tensor:
    """L_DA = mean_b KL_prior(video b) + mean_g KL_prior(text g) + mean_g KL(text g || video text_video[g])
    (either part switchable); ``variant`` as in the module docstring."""
    if variant not in DA_VARIANTS:
        raise InputError(f"da_variant must be one of {', '.join(DA_VARIANTS)}, got {variant!r}")
    prior_term: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if variant == "as_released":
        video_mean, text_mean, prior_term = video_proxies.mean(dim=1), text_proxies.mean(dim=1), prior_kl_as_released
    else:
        video_mean, text_mean, prior_term = video_mu, text_mu, prior_kl
    total = video_mu.new_zeros(())
    if prior:
        total = total + prior_term(video_mean, video_log_sigma).mean() + prior_term(text_mean, text_log_sigma).mean()
    if cross:
        total = total + gaussian_kl(text_mean, text_log_sigma, video_mean[text_video],
                                    video_log_sigma[text_video]).mean()
    return total


__all__ = [
    "DA_VARIANTS", "bag_nce", "distribution_alignment_loss", "gaussian_kl", "prior_kl", "prior_kl_as_released",
    "proxy_matching_loss", "sample_proxies",
]
