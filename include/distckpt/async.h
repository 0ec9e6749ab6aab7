// AsyncCheckpointer: saves that block training only for a snapshot to host memory.
//
// SaveAsync copies every tensor of the tree into host buffers that are kept and reused from
// one save to the next (page-locked memory for CUDA tensors, copied on a side stream that first
// waits for the work queued on the current stream, through options.device_staging's engine, the
// built-in one by default), then returns: training may modify the
// model at once. A background thread per rank writes the HDF5 files, fsyncs and takes part in
// the commit vote over its own duplicate of the MPI world communicator, so it never collides
// with the training's collectives. At most one save is in flight: SaveAsync first waits for the
// previous one. Wait() returns the last save's directory or throws its Error, the same on every
// rank.
//
// Requirements: with more than one MPI rank, MPI must be initialised with
// MPI_THREAD_MULTIPLE. HDF5 is not thread-safe in Debian's build, so while a save is in flight
// the process must make no other HDF5 calls (no Load, no synchronous Save): call Wait() first.
// Methods are called from one (the training) thread.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "distckpt/checkpoint.h"
#include "distckpt/copy_engine.h"

namespace distckpt {

class AsyncCheckpointer {
 public:
  // Collective: duplicates the MPI world communicator (or uses a local one without MPI).
  explicit AsyncCheckpointer(std::string root, CheckpointerOptions options = {});
  // Collective: the background thread votes over `comm`, which no other thread may use (give
  // it a communicator of its own, e.g. a separate process group).
  AsyncCheckpointer(std::string root, CheckpointerOptions options,
                    std::unique_ptr<Communicator> comm);
  // Waits for the save in flight; its error, if any, is dropped (call Wait() to see it).
  ~AsyncCheckpointer();

  // Collective. Waits for the previous save (throwing its error), snapshots `tree`, starts the
  // write in the background and returns. `tag`: as Checkpointer::Save.
  void SaveAsync(const StateTree& tree, int64_t step, const std::string& tag = "");
  // Collective if a save is in flight. The last save's directory; throws its Error.
  std::string Wait();
  bool in_flight() const { return worker_.joinable(); }
  // Seconds the last SaveAsync blocked the caller (waiting for the previous save included).
  double last_blocked_seconds() const { return last_blocked_; }
  // Bytes of snapshot buffers held for reuse.
  int64_t snapshot_bytes() const;

 private:
  void Snapshot(const StateTree& tree);
  Result<at::Tensor> SnapshotBuffer(const at::Tensor& src, bool on_device);
  Status CopyFromDevices(const std::vector<at::Tensor>& sources,
                         const std::vector<at::Tensor>& buffers);

  std::string root_;
  CheckpointerOptions options_;
  std::unique_ptr<CopyEngine> built_in_engine_;
  CopyEngine* engine_;  // snapshots device tensors
  std::unique_ptr<Communicator> comm_;
  std::map<std::string, at::Tensor> buffers_;  // path -> reusable host snapshot
  std::unique_ptr<Checkpointer> planner_;      // keeps the last plan for the next save
  std::shared_ptr<SavePlan> plan_;             // of the save in flight
  StateTree snapshot_;                         // this rank's planned bytes, in buffers_
  std::thread worker_;
  Status status_;
  std::string dir_;
  double last_blocked_ = 0;
};

}  // namespace distckpt
