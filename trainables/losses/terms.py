"""The loss terms' names: one vocabulary for every backbone and plugin, so loss curves overlay across runs.

A backbone's ``training_losses`` returns its weighted terms under these names, and a trial reports each
epoch's mean of a term ``name`` as ``loss_<name>`` (``trainables.trial_report.epoch_report``). The same
loss has the same name whichever backbone computes it: MS-SL's and GMMFormer's clip-scale triplet are
both ``clip_triplet``. Standard library only, so a reader of stored results (report, benchmarks) can
import it without torch.

Names are ``<scale>_<form>`` for the ranking losses, where the scale is the score the loss is computed on:

* ``clip`` - the clip-scale score: a query against a video's clip tokens or proposals (max over them);
* ``frame`` - the frame-scale score: a query against a video vector pooled from its frame tokens, or
  against the frame tokens themselves (MS-SL's key-clip guided vector, GMMFormer v1's pooled vector,
  GMMFormer v2's max over frames, meanpool's only score, a plugin's replacement frame score);

and the form is ``nce`` (multi-positive InfoNCE on raw dot products; MS-SL's frame branch: its diagonal
form) or ``triplet`` (MS-SL's triplet on cosines, random then hard negatives; MS-SL's frame branch: its
diagonal form). A term a plugin adds is named ``<plugin>.<term>`` (the plugin's name, a dot, the term):
the part before the dot says which plugin adds it. AMDNet's own moment losses are the ``moment`` family
the ``moment`` plugin adds to other backbones, so they share its names (``moment.div``, ``moment.rel``).
"""

from __future__ import annotations

CLIP_NCE = "clip_nce"
CLIP_TRIPLET = "clip_triplet"
FRAME_NCE = "frame_nce"
FRAME_TRIPLET = "frame_triplet"
QUERY_DIVERSITY = "qdl"
OPTIMAL_MATCHING = "om"
MOMENT_DIVERSITY = "moment.div"
MOMENT_RELEVANCE = "moment.rel"
RAL_PROXY_MATCHING = "ral.pm"
RAL_DISTRIBUTION_ALIGNMENT = "ral.da"
MSC_RKD_DISTANCE = "msc.rkd_distance"
MSC_RKD_ANGLE = "msc.rkd_angle"
MSC_CBVA = "msc.cbva"

#: every loss term's name and what it is (the weight named in brackets multiplies it)
LOSS_TERMS: dict[str, str] = {
    CLIP_NCE: "InfoNCE on the clip-scale score (mssl clip_nce_weight, gmmformer/gmmformer2 loss_factor[0], "
              "amdnet nce_weight)",
    CLIP_TRIPLET: "triplet ranking loss on the clip-scale cosine score (mssl, gmmformer, gmmformer2)",
    FRAME_NCE: "InfoNCE on the frame-scale score (mssl frame_nce_weight: its diagonal form, gmmformer/gmmformer2 "
               "loss_factor[1], meanpool nce_weight)",
    FRAME_TRIPLET: "triplet ranking loss on the frame-scale cosine score (mssl: its diagonal form, gmmformer, "
                   "gmmformer2, meanpool)",
    QUERY_DIVERSITY: "query diverse loss: pushes apart the queries of one video (gmmformer's QDL, gmmformer2's "
                     "revamped focal QDL; loss_factor[2])",
    OPTIMAL_MATCHING: "optimal matching: 1 - mean cosine of a video's queries Hungarian-matched to its clip tokens "
                      "(gmmformer2, loss_factor[3])",
    MOMENT_DIVERSITY: "moment diversity L_div: K soft temporal masks per video cover different parts of it "
                      "(amdnet div_weight, the moment plugin's div_weight)",
    MOMENT_RELEVANCE: "moment relevance L_rel: a query's best own-video moment beats the video's global vector by "
                      "a margin (amdnet rel_weight, the moment plugin's rel_weight)",
    RAL_PROXY_MATCHING: "RAL's proxy matching L_PM: bag-of-features NCE over video and text Gaussian proxies, both "
                        "ways (pm_weight)",
    RAL_DISTRIBUTION_ALIGNMENT: "RAL's distribution alignment L_DA: prior KL of the video and text Gaussians plus "
                                "their cross-modal KL (da_weight)",
    MSC_RKD_DISTANCE: "MSC's relational distillation, distance part: the queries' pairwise distances follow a frozen "
                      "sentence teacher's (alpha_d)",
    MSC_RKD_ANGLE: "MSC's relational distillation, angle part: the queries' triplet angles follow the teacher's "
                   "(alpha_a)",
    MSC_CBVA: "MSC's cross-branch video alignment: each video's frame tokens contrasted with its segment tokens "
              "(cbva_weight)",
}


def plugin_term(plugin: str, term: str) -> str:
    """The reported name of term ``term`` that plugin ``plugin`` adds: ``ral`` + ``pm`` -> ``ral.pm``."""
    return f"{plugin}.{term}"


def term_in_plugin(name: str) -> str:
    """The plugin's own part of a plugin term's name (what its ``losses`` returns): ``ral.pm`` -> ``pm``."""
    plugin, dot, term = name.partition(".")
    if not dot or not plugin or not term:
        raise ValueError(f"{name!r} is not a plugin's loss term (<plugin>.<term>)")
    return term


__all__ = ["CLIP_NCE", "CLIP_TRIPLET", "FRAME_NCE", "FRAME_TRIPLET", "LOSS_TERMS", "MOMENT_DIVERSITY",
           "MOMENT_RELEVANCE", "MSC_CBVA", "MSC_RKD_ANGLE", "MSC_RKD_DISTANCE", "OPTIMAL_MATCHING",
           "QUERY_DIVERSITY", "RAL_DISTRIBUTION_ALIGNMENT", "RAL_PROXY_MATCHING", "plugin_term", "term_in_plugin"]
