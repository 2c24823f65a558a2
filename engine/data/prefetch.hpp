// prefetch.hpp — an ordered, bounded producer/consumer queue on one background thread: the thread
// computes items 0, 1, 2, ... ahead of the consumer, at most `depth` ready at a time, and take()
// hands them out in order. The loader uses it to build the next batches while the step runs; take()
// returns how long it blocked, which the engine books as data_loading_sync badput. Buffers are
// swapped, not reallocated, so the steady state allocates nothing.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace megacpp::data {

class Prefetcher {
 public:
  // produce(index, buf) fills `buf` (resize it as needed) with item `index`. It runs on the
  // background thread; an exception it throws is rethrown by the take() that reaches that item.
  using Produce = std::function<void(int64_t index, std::vector<int32_t>& buf)>;
  Prefetcher(Produce produce, int depth);
  ~Prefetcher();  // stops the thread and joins it
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Blocks until the next item is ready and swaps it into `out` (whose old buffer is recycled).
  // Returns the seconds spent blocked (0 when the item was already there).
  double take(std::vector<int32_t>& out);
  int64_t taken() const { return taken_; }  // items handed out so far (the next take() returns this index)

 private:
  void run();
  Produce produce_;
  std::size_t depth_;
  std::mutex mu_;
  std::condition_variable ready_cv_, space_cv_;
  std::deque<std::vector<int32_t>> ready_;
  std::vector<std::vector<int32_t>> free_;
  std::exception_ptr error_;
  bool stop_ = false;
  int64_t taken_ = 0;
  std::thread thread_;  // last: started after everything above exists
};

}  // namespace megacpp::data
