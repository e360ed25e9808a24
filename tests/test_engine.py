"""The loops (engine.py): one epoch of training, evaluation, the EMA, and the course's functions."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loops
from coco import engine, leaderboard


def _logit(p):
    return math.log(p / (1 - p))


def test_validation_loop_thresholds_probabilities_with_the_leaderboard_metric():
    # The "network" is the identity: the inputs are the logits. Probabilities, 3 images x 3 classes:
    probs = torch.tensor([[0.60, 0.20, 0.90],
                          [0.55, 0.70, 0.10],
                          [0.30, 0.52, 0.40]])
    targets = torch.tensor([[1., 0., 1.],
                            [0., 1., 0.],
                            [1., 1., 0.]])
    logits = torch.log(probs / (1 - probs))
    loader = DataLoader(TensorDataset(logits, targets), batch_size=2)
    results, class_results = loops.validation_loop(loader, nn.Identity(), nn.BCEWithLogitsLoss(), 3, "cpu",
                                                   multi_label=True, th_multi_label=0.5, class_metrics=True)
    # Predicted at p > 0.5: class 0 {img0, img1}: TP 1, FP 1, 2 positives -> P 1/2, R 1/2
    # class 1 {img1, img2}: TP 2, FP 0, 2 positives -> P 1, R 1;  class 2 {img0}: TP 1, 1 positive -> P 1, R 1
    # weights 1/n_c normalised: (1/2, 1/2, 1) / 2 = (0.25, 0.25, 0.5)
    precision = 0.25 * 0.5 + 0.25 * 1 + 0.5 * 1
    recall = precision
    assert results["precision"] == pytest.approx(precision)
    assert results["recall"] == pytest.approx(recall)
    assert results["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert results["accuracy"] == pytest.approx(4 / 5)  # TP / positives
    assert results["loss"] == pytest.approx(nn.BCEWithLogitsLoss()(logits, targets).item(), rel=1e-5)
    assert [round(c["f1"], 6) for c in class_results] == [0.5, 1.0, 1.0]
    # Thresholding the logits at 0.5 instead (the course skeleton's habit) would drop img0/class 0 (logit 0.41),
    # img1/class 0 (0.20) and img2/class 1 (0.08): a different F1, so the value above proves probabilities.
    logit_preds = logits > 0.5
    assert leaderboard.leaderboard_scores(logit_preds, targets, warn=False)["f1"] != pytest.approx(results["f1"])


def test_validation_loop_single_label_and_one_hot():
    logits = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 0.2], [0.1, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)
    results = loops.validation_loop(loader, nn.Identity(), nn.CrossEntropyLoss(), 3, "cpu")
    assert results["accuracy"] == pytest.approx(0.5)
    one_hot_loader = DataLoader(TensorDataset(logits, torch.eye(3)[labels]), batch_size=3)
    same = loops.validation_loop(one_hot_loader, nn.Identity(), nn.CrossEntropyLoss(), 3, "cpu", one_hot=True)
    assert same["accuracy"] == results["accuracy"] and same["f1"] == pytest.approx(results["f1"])


def test_train_loop_returns_grouped_minibatch_losses_and_learns():
    torch.manual_seed(0)
    inputs = torch.randn(64, 8)
    targets = (inputs[:, :4] > 0).float()  # 4 labels, each readable from one input
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=8)  # 8 batches
    net = nn.Linear(8, 4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    criterion = nn.BCEWithLogitsLoss()
    before = loops.validation_loop(loader, net, criterion, 4, "cpu", multi_label=True)
    assert loops.train_loop(loader, net, criterion, optimizer, "cpu") is None
    losses = loops.train_loop(loader, net, criterion, optimizer, "cpu", mbatch_loss_group=3)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)  # 8 batches -> 2 full groups of 3
    for _ in range(10):
        loops.train_loop(loader, net, criterion, optimizer, "cpu")
    after = loops.validation_loop(loader, net, criterion, 4, "cpu", multi_label=True)
    assert after["loss"] < 0.6 * before["loss"] and after["f1"] > 0.9


class _RecordingWriter:
    def __init__(self):
        self.scalars, self.groups = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_scalars(self, tag, values, step):
        self.groups.append((tag, values, step))

    def flush(self):
        pass


def test_update_graphs_writes_the_course_graphs():
    writer = _RecordingWriter()
    train = {"loss": 1.0, "f1": 0.1, "precision": 0.2, "recall": 0.3, "accuracy": 0.4}
    test = {"loss": 2.0, "f1": 0.5, "precision": 0.6, "recall": 0.7, "accuracy": 0.8}
    classes = [{"f1": 0.1, "precision": 0.2, "recall": 0.3}] * 2
    engine.update_graphs(writer, 2, train, test, classes, classes, class_names=["cat", "dog"],
                        mbatch_group=5, mbatch_count=10, mbatch_losses=[0.9, 0.8])
    tags = {tag: (values, step) for tag, values, step in writer.groups}
    assert tags["Losses/Train Loss vs Test Loss"] == ({"Train Loss": 1.0, "Test Loss": 2.0}, 30)
    assert tags["Metrics/Train F1 vs Test F1"][0] == {"Train F1": 0.1, "Test F1": 0.5}
    for tag in ("Metrics/Train Precision vs Test Precision", "Metrics/Train Recall vs Test Recall",
                "Metrics/Train Accuracy vs Test Accuracy", "Class Metrics/dog/Train Recall vs Test Recall"):
        assert tag in tags
    assert [step for _, _, step in writer.scalars] == [25, 30]


def test_ema_ramps_up_and_averages():
    net = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(net.weight)
    ema = engine.ModelEma(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # decay min(0.9, 2/11)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 1 - 2 / 11))
    state = ema.state_dict()
    other = engine.ModelEma(net, decay=0.9)
    other.load_state_dict(state)
    assert other.updates == 1 and torch.equal(other.module.weight, ema.module.weight)
    ema.update(net)  # decay min(0.9, 3/12) = 0.25: 0.25 * 9/11 + 0.75 * 1
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.25 * 9 / 11 + 0.75))


def test_gradient_clipping_and_flip_tta():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    images, targets = torch.randn(8, 3, 6, 6), torch.ones(8, 2)
    loader = DataLoader(TensorDataset(images, targets), batch_size=8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the gradients stay those of these weights
    result = engine.train_one_epoch(net, loader, nn.BCEWithLogitsLoss(), optimizer, "cpu", grad_clip=1e-3,
                                   progress=False, collect_probs=True)
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert grad_norm == pytest.approx(1e-3, rel=1e-4)  # the unclipped norm is far larger
    assert result["steps"] == 1 and result["probs"].shape == (8, 2)
    with torch.no_grad():
        expected = (torch.sigmoid(net(images)) + torch.sigmoid(net(images.flip(-1)))) / 2
    out = engine.evaluate(net, loader, "cpu", tta_hflip=True, progress=False)
    torch.testing.assert_close(out["probs"], expected)
    assert math.isnan(out["loss"])  # no criterion given

