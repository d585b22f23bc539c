"""What `python train.py` trains. Edit a value here, or give its flag (`--epochs 3`), which wins.
Each name is a flag of train.py (batch_size -> --batch-size; a bool also --no-...); `python
train.py --help` gives every flag's help. A name the package does not know is refused."""

# The experiment
epochs: int = 50  # passes over the training set
batch_size: int = 128  # images per batch
lr: float = 1e-3  # Adam's learning rate
lr_decay: float = 0.96  # the rate is multiplied by this every lr_decay_steps (1: constant)
lr_decay_steps: int = 2000  # optimizer steps (batches) per lr_decay
dataset: str = "mnist"  # mnist, multimnist, mnist40, affnist, fashion-mnist, cifar10, svhn, ...
train_samples: int = 0  # train on the first N training images (0: all)
test_samples: int = 0  # test on the first N test images (0: all)
validation_samples: int = 0  # hold out N training images; best.pt is then chosen on them
shift: int = 2  # random shift of training images, in pixels
crop: int = 0  # random crop x crop in training, the centre crop at test (0: none)
model: str = "capsnet"  # or baseline: the paper's CNN
recipe: str = "paper"  # paper: as the paper's text says; official: as its authors' code does
conv1_channels: int = 256  # channels of the first convolution
primary_types: int = 32  # primary capsule types
primary_dim: int = 8  # dimensions of a primary capsule
class_dim: int = 16  # dimensions of a class capsule
primary_norm: str = "squash"  # or layer-norm
routing: str = "dynamic"  # dynamic (the paper's), self-attention, uniform, attention, em
routing_iterations: int = 3  # routing iterations
leaky_routing: bool = False  # a none-of-the-above class in the routing softmax
detach_routing: bool = False  # gradients through the last routing iteration only
digit_bias: bool = False  # a bias on the class capsules
score_loss: str = "margin"  # margin (the paper's), spread or cross-entropy
m_plus: float = 0.9  # margin loss m+
m_minus: float = 0.1  # margin loss m-
lambda_absent: float = 0.5  # margin loss down-weighting of absent classes
reconstruction_weight: float = 0.0005  # weight of the reconstruction's sum of squares
average_from: int = 0  # test and ship the mean of the weights from this epoch on (0: off)
stop_at_accuracy: float = 0.0  # stop once the selection accuracy reaches this % (0: never)
seed: int = 0  # random seed for weights, shuffling and shifts

# The baseline (--model baseline) and the folder dataset
baseline_channels: str = ""  # its convolutions' channels, e.g. "256,256,128" (empty: recipe's)
baseline_hidden: str = ""  # its fully connected widths, e.g. "328,192" (empty: recipe's)
dropout: float = 0.5  # dropout before its logits
image_size: int = 28  # side the folder dataset's images are resized to

# How the run computes (none changes what it learns)
fast_kernels: bool = True  # off: every layer as written in capsnet/model.py, left to autograd
device: str = "auto"  # auto, cpu or cuda
precision: str = "auto"  # auto: bf16 where the device has bf16 matrix units, else fp32; or fp32, tf32, bf16
micro_batch: int = 0  # compute a batch in parts of at most N images, gradients summed (0: automatic)
compile: bool = False  # torch.compile the model
compile_mode: str = "default"  # default, reduce-overhead, max-autotune, ...
deterministic: bool = False  # deterministic CUDA kernels: resume repeats a run bit for bit
threads: int = 0  # CPU threads (0: PyTorch's default)
download: bool = True  # download the dataset when its files are missing

# Where the run goes, and the dashboard (the dataset root: --data-dir or CAPSNET_DATA_DIR)
run_dir: str = ""  # metrics.csv and checkpoints (empty: runs/<timestamp>)
log_every: int = 20  # batches between progress-bar updates
visdom: bool = True  # the live Visdom dashboard
visdom_host: str = "127.0.0.1"  # its address (another than loopback is seen by other machines)
visdom_port: int = 8097
visdom_env: str = ""  # its environment (empty: the run directory's name)
visdom_every: int = 10  # batches between its live updates
visdom_figures_every: int = 1  # epochs between its figures (0: none)
visdom_autostart: bool = True  # start a Visdom server when none answers
