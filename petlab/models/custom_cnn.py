"""The seed project's hand-built CNN, exactly as its published torchinfo summary describes it.

See ../shared/reference/custom_cnn.md: ReLU comes *before* BatchNorm, and block 3 is one
module applied four times (shared weights), so torchinfo lists it as "recursive". Six 2x
poolings leave 3 x 3 x 512 = 4608 features only for inputs of 192 to 255 px.
"""

from torch import nn

MIN_SIZE, MAX_SIZE = 192, 255
BLOCK3_REPEATS = 4


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(2),
    )


class CustomCNN(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.block1 = conv_block(3, 64)
        self.block2 = conv_block(64, 512)
        self.block3 = conv_block(512, 512)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512 * 3 * 3, num_classes))

    def forward(self, x):
        x = self.block2(self.block1(x))
        for _ in range(BLOCK3_REPEATS):
            x = self.block3(x)
        return self.head(x)
