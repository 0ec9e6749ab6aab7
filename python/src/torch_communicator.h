// The engine's Communicator over torch.distributed, for jobs started without mpirun: every
// collective calls a distckpt._torch_comm.TorchComm (a gloo group of its own), taking the GIL
// for the call. A failure (a rank gone, the group's deadline passed) comes back as a Status
// that names this rank, its host and the collective.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "distckpt/comm.h"

namespace distckpt_python {

std::unique_ptr<distckpt::Communicator> MakeTorchCommunicator(pybind11::object torch_comm);

}  // namespace distckpt_python
