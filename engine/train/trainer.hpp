// trainer.hpp — `megacpp train`: the training loop around the model, the data loader, AdamW,
// evaluation, checkpoints and the receipt (goodput/badput, temporal series).
#pragma once
#include <string>

#include "engine/config/recipe.hpp"
#include "engine/receipts/receipt.hpp"

namespace megacpp {

class Communicator;  // engine/dist/communicator.hpp

struct TrainOptions {
  std::string resume;  // "" | "latest" | RUN_DIR | checkpoint dir
  bool quiet = false;  // no per-step log lines (tests)
  int64_t interrupt_after_step = -1;  // tests: behave as if SIGINT arrived during this step (1-based)
  // Tests (fault naming): rank fail_rank throws "injected failure" right after step fail_after_step (1-based).
  int fail_rank = -1;
  int64_t fail_after_step = -1;
  // Data parallelism: null (or a world of 1) = the single-rank path, unchanged. Otherwise every rank
  // of `comm` calls run_training with the same recipe; rank 0 writes the receipt and checkpoints.
  // Any communicator with either backend: NCCL (one process per GPU) or in-process (threads; on the CUDA
  // backend they share one GPU — tests). The CUDA backend reduces on the device (pure DP, overlapped with
  // the backward, or ZeRO-1) or host-staged (TP/EP).
  Communicator* comm = nullptr;
  int64_t bucket_elems = int64_t{1} << 20;  // gradient all-reduce bucket over the flat grad buffer (elements)
};

// Runs the whole training; fills rc's "training" section and its status. Returns the exit code
// (0 ok, 1 failed, 2 not available, 130 interrupted). Throws on configuration/data errors (the
// caller's run_with_receipt records them).
int run_training(const Recipe& r, const TrainOptions& opt, RunReceipt& rc);

// SIGINT/SIGTERM: finish the current step, checkpoint, write the receipt "interrupted", exit 130.
void install_training_signal_handlers();
bool training_interrupt_requested();
void request_training_interrupt();  // for tests

}  // namespace megacpp
