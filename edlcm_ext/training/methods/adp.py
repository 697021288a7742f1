import torch

from ...loss.regularizer import ensemble_cross_entropy
from .base import Method, register


@register("adp")
class ADP(Method):
    """ADP, adaptive diversity promoting (Pang et al. 2019), with PDD's defaults alpha = 2, beta = 0.5:

    L_ece - alpha * H(mean_m p_m) - beta * log det(N N^T + det_offset * I),

    where row m of N (M, L-1) is member m's prediction without the true class, L2-normalised
    (the ensemble diversity), H the Shannon entropy; batch means of both terms.
    """

    name = "adp"
    min_members = 2

    def __init__(
        self, alpha: float = 2.0, beta: float = 0.5, det_offset: float = 1e-6, log_offset: float = 1e-20
    ) -> None:
        self.alpha, self.beta, self.det_offset, self.log_offset = alpha, beta, det_offset, log_offset

    def loss(self, ensemble, x, y):
        member_logits = ensemble.member_logits(x)
        ce = ensemble_cross_entropy(member_logits, y)
        probabilities = torch.stack([logits.softmax(dim=1) for logits in member_logits], dim=1)  # (B, M, L)
        mean_probability = probabilities.mean(dim=1)
        entropy = -(mean_probability * (mean_probability + self.log_offset).log()).sum(dim=1).mean()
        batch, members, classes = probabilities.shape
        # Drop the true class by gathering the other L-1 classes in order (a fixed shape, unlike a
        # boolean mask, so torch.compile keeps the loss in one graph).
        others = torch.arange(classes - 1, device=y.device).expand(batch, -1)
        others = others + (others >= y.unsqueeze(1)).long()
        non_maximal = probabilities.gather(2, others.unsqueeze(1).expand(batch, members, classes - 1))
        non_maximal = non_maximal / non_maximal.norm(dim=2, keepdim=True)
        gram = non_maximal @ non_maximal.transpose(1, 2)
        eye = torch.eye(members, dtype=gram.dtype, device=gram.device)
        log_det = torch.logdet(gram + self.det_offset * eye).mean()
        loss = ce - self.alpha * entropy - self.beta * log_det
        return loss, {"ce": ce, "entropy": entropy, "log_det": log_det}
