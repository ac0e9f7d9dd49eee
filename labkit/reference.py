"""The report's training loop, headless: its code as written, minus the PyQt5 GUI (the tests' oracle, the benchmark's baseline).

Changes from the appendix, and only these:
- the GUI calls (progress bar, labels) are dropped;
- the body of `train_image` is split into a setup and a one-epoch function, so a benchmark can
  time epoch by epoch; the statements inside are the report's, in its order;
- on a CPU the report's code crashes (uint8 input to a float conv): it casts the tensors to
  float32/long only inside its `if torch.cuda.is_available():` branch, so this copy adds exactly
  those two casts outside it;
- MNIST is read with the report's own `load_mnist` from decompressed copies of data/mnist/ that
  `prepare_mnist_dir` writes under the report's file names.
"""
import gzip
import os
import struct
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import torch.utils.data as Data

from .config import MNIST_DIR


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=16, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=2),
        )
        self.fc = nn.Sequential(
            nn.Linear(16 * 14 * 14, 128),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        out = self.conv(x)
        out = out.view(out.size(0), -1)
        out = self.fc(out)
        return out


def load_mnist(path, loading_type):
    labels_path = os.path.join(path, '%s-labels.idx1-ubyte' % loading_type)
    images_path = os.path.join(path, '%s-images.idx3-ubyte' % loading_type)
    with open(labels_path, 'rb') as labels_file:
        magic, n = struct.unpack('>II', labels_file.read(8))
        labels = np.fromfile(labels_file, dtype=np.uint8)
    with open(images_path, 'rb') as images_file:
        magic, num, rows, cols = struct.unpack('>IIII', images_file.read(16))
        images = np.fromfile(images_file, dtype=np.uint8).reshape([len(labels), 1, 28, 28])
    return images, labels


def prepare_mnist_dir() -> str:
    """Decompress data/mnist/*.gz into a temp folder under the report's file names."""
    out = tempfile.mkdtemp(prefix="report-mnist-")
    for split, ours in (("train", "train"), ("t10k", "t10k")):
        for kind in ("images", "labels"):
            src = MNIST_DIR / f"{ours}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
            with open(os.path.join(out, f"{split}-{kind}.idx{3 if kind == 'images' else 1}-ubyte"), "wb") as f:
                f.write(gzip.decompress(src.read_bytes()))
    return out


def setup(mnist_dir, seed=1, checkpoint_dir=None):
    """train_image, up to its epoch loop."""
    torch.manual_seed(seed)  # the report seeds once, at import
    images, labels = load_mnist(mnist_dir, 'train')
    image_input_train = torch.from_numpy(images)
    label_train = torch.from_numpy(labels)
    model = Net()
    if torch.cuda.is_available():
        model = model.cuda()
        device = torch.device("cuda")
        image_input_train = image_input_train.to(device, dtype=torch.float32)
        label_train = label_train.to(device, dtype=torch.long)
    else:  # added: the report's CPU path has no cast and crashes
        image_input_train = image_input_train.to(dtype=torch.float32)
        label_train = label_train.to(dtype=torch.long)
    BATCH_SIZE = 128  # 每个batch的大小
    torch_dataset_train = Data.TensorDataset(image_input_train, label_train)
    loader_train = Data.DataLoader(
        dataset=torch_dataset_train,
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=0,
    )
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    PATH = os.path.join(checkpoint_dir or tempfile.mkdtemp(prefix="report-ckpt-"), 'cnn.pth')
    return dict(model=model, loader_train=loader_train, criterion=criterion, optimizer=optimizer,
                BATCH_SIZE=BATCH_SIZE, PATH=PATH, epoch=0)


def train_epoch(s):
    """One pass of the report's `for epoch in range(EPOCH_SIZE):` body; returns what it printed."""
    model, loader_train, criterion, optimizer = s["model"], s["loader_train"], s["criterion"], s["optimizer"]
    BATCH_SIZE, PATH, epoch = s["BATCH_SIZE"], s["PATH"], s["epoch"]
    guest_train_count = 0
    right_train_count = 0
    running_loss = 0.0
    for _, (batch_x, batch_y) in enumerate(loader_train, 0):
        optimizer.zero_grad()
        outputs = model(batch_x)
        loss = criterion(outputs, batch_y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        for i in range(BATCH_SIZE):
            if i > outputs.shape[1]:
                break
            one_output = outputs[i]
            one_output = one_output.unsqueeze(0)
            predicted = torch.argmax(one_output)
            guest_train_count += 1
            if (predicted.item() == batch_y[i]):
                right_train_count += 1
    print('epoch: %d loss: %.3f' % (epoch + 1, running_loss / BATCH_SIZE))
    torch.save(model.state_dict(), PATH)
    s["epoch"] += 1
    return {"train_loss": running_loss / BATCH_SIZE, "train_acc": right_train_count / guest_train_count}
