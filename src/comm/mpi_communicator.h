// The MPI communicator over any MPI communicator, for programs that split MPI_COMM_WORLD into
// groups (MakeMpiCommunicator() in distckpt/comm.h is the one over MPI_COMM_WORLD).
#pragma once

#include <mpi.h>

#include <memory>

#include "distckpt/comm.h"

namespace distckpt {

// Collective over `base`; works on a duplicate of it (MPI must be initialised).
std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm base);

}  // namespace distckpt
