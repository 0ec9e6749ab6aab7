// The PyTorch checkpoint tutorial's model, data-parallel under mpirun: Linear(10, 1) trained with
// SGD, saved every epoch as {"epoch", "model_state_dict", "optimizer_state_dict", "loss"} and
// resumed from the newest good checkpoint on any number of ranks.
//   usage: consumer CKPT_ROOT EPOCHS
#include <distckpt/checkpoint.h>
#include <distckpt/state_dict.h>
#include <distckpt/status.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

namespace {

// The mean over all ranks of every gradient, as data-parallel training does.
void AverageGradients(torch::nn::Module& model, int world) {
  for (auto& p : model.parameters()) {
    at::Tensor grad = p.grad().contiguous();
    MPI_Allreduce(MPI_IN_PLACE, grad.data_ptr<float>(), static_cast<int>(grad.numel()), MPI_FLOAT,
                  MPI_SUM, MPI_COMM_WORLD);
    p.mutable_grad() = grad / world;
  }
}

double Train(char** argv) {
  const std::string root = argv[1];
  const int64_t epochs = std::stoll(argv[2]);
  auto comm = distckpt::MakeDefaultCommunicator();
  torch::manual_seed(0);
  torch::nn::Linear model(10, 1);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));

  distckpt::Checkpointer checkpointer(root, *comm);
  int64_t first = 1;
  if (checkpointer.Latest()) {  // resume from the newest checkpoint that loads
    auto meta = distckpt::LoadTrainingState(checkpointer, "", *model, &optimizer,
                                            distckpt::LoadOptions{.fall_back = true});
    first = meta.epoch + 1;
    if (comm->rank() == 0)
      std::printf("resumed from %s (epoch %lld)\n", meta.dir.c_str(),
                  static_cast<long long>(meta.epoch));
  }

  double loss = 0;
  for (int64_t epoch = first; epoch <= epochs; ++epoch) {
    torch::manual_seed(1000 * epoch + comm->rank());  // this rank's batch of this epoch
    at::Tensor x = torch::randn({16, 10});
    at::Tensor y = x.sum(1, true);
    optimizer.zero_grad();
    at::Tensor batch_loss = torch::mse_loss(model->forward(x), y);
    batch_loss.backward();
    AverageGradients(*model, comm->size());
    optimizer.step();
    loss = batch_loss.item<double>();
    MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    loss /= comm->size();
    checkpointer.Save(distckpt::MakeTrainingState(*model, &optimizer, epoch, loss), epoch);
    if (comm->rank() == 0)
      std::printf("epoch %lld loss %.9g\n", static_cast<long long>(epoch), loss);
  }
  return loss;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: consumer CKPT_ROOT EPOCHS\n");
    MPI_Finalize();
    return 2;
  }
  int rc = 0;
  try {
    Train(argv);
  } catch (const distckpt::Error& e) {  // the same error on every rank
    std::fprintf(stderr, "consumer: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
