import torch
from torch import Tensor

from ...loss.regularizer import ensemble_cross_entropy
from .base import Method, register


def parallel_diversified_dropout_mask(
    features: list[Tensor], bins: int, keep_top: float, keep_other: float
) -> list[Tensor]:
    """PDD's member-specific dropout masks on the members' penultimate features (each (B, F)).

    Per sample, the concatenated features are binned into ``bins`` equal-width bins between their
    min and max; member i is assigned the i-th most populated bin. A feature of member i in its
    assigned bin is kept with probability ``keep_top``; any other is kept with probability
    ``keep_other * (1 - n / F)``, n the number of member i's features sharing its bin, so the
    features a member shares with many of its own are dropped more often.
    """
    members = len(features)
    width = features[0].shape[1]
    if any(f.shape != features[0].shape for f in features):
        raise ValueError("PDD needs members whose penultimate features have the same shape")
    if members > bins:
        raise ValueError(f"PDD assigns one bin per member: bins ({bins}) must be >= members ({members})")
    with torch.no_grad():
        concatenated = torch.cat(features, dim=1)
        low = concatenated.min(dim=1, keepdim=True).values
        span = (concatenated.max(dim=1, keepdim=True).values - low).clamp_min(torch.finfo(concatenated.dtype).tiny)
        bin_index = ((concatenated - low) * bins / span).floor().long().clamp_(0, bins - 1)
        counts = concatenated.new_zeros(concatenated.shape[0], bins).scatter_add_(
            1, bin_index, torch.ones_like(concatenated)
        )
        assigned = counts.topk(members, dim=1).indices  # (B, members), most populated first
        masks = []
        for member, member_bins in enumerate(bin_index.split(width, dim=1)):
            own_counts = torch.zeros_like(counts).scatter_add_(1, member_bins, torch.ones_like(features[member]))
            keep = keep_other * (1 - own_counts.gather(1, member_bins) / width)
            keep = torch.where(member_bins == assigned[:, member : member + 1], torch.full_like(keep, keep_top), keep)
            masks.append(torch.bernoulli(keep).to(features[member].dtype))
    return masks


@register("pdd")
class PDD(Method):
    """PDD, parallel diversified dropout (Huang et al. 2021, their ensemble_3_resnet18_fc): during
    training, member-specific Bernoulli masks on the penultimate features (10 bins, keep 0.9 in the
    member's bin, 0.1 * (1 - share) elsewhere, no rescaling); plain L_ece. At test time the members
    run unmasked. Members must be :class:`edlcm_ext.models.Classifier` (body + linear classifier)."""

    name = "pdd"

    def __init__(self, bins: int = 10, keep_top: float = 0.9, keep_other: float = 0.1) -> None:
        self.bins, self.keep_top, self.keep_other = bins, keep_top, keep_other

    def loss(self, ensemble, x, y):
        features = [member.body(x) for member in ensemble.members]
        masks = parallel_diversified_dropout_mask(features, self.bins, self.keep_top, self.keep_other)
        member_logits = [member.classifier(f * mask) for member, f, mask in zip(ensemble.members, features, masks)]
        loss = ensemble_cross_entropy(member_logits, y)
        kept = torch.stack([mask.mean() for mask in masks]).mean()
        return loss, {"ce": loss, "kept": kept}
