# Version manifest: the oldest versions we build against (Debian 12, the CI machine) and the ones
# seen on the GPU machine (Ubuntu 24.04). See ../shared/docs/machines.md. Minimums are enforced by
# find_package; both columns must build.
#                                   Debian 12 (CI)    Ubuntu 24.04 (GPU)
set(MEGACPP_MIN_CLI11     2.1)    # 2.1.2             2.4.1
set(MEGACPP_MIN_YAMLCPP   0.7)    # 0.7.0             0.8.0
set(MEGACPP_MIN_SPDLOG    1.10)   # 1.10              1.12
set(MEGACPP_MIN_NLOHMANN  3.11)   # 3.11.2            3.11.3
set(MEGACPP_MIN_GTEST     1.12)   # 1.12.1            1.14
set(MEGACPP_MIN_CUDA      13.0)   # 13.0              13.0.88
set(MEGACPP_MIN_CUDNN     9.14)   # 9.19              9.14  (use no API newer than 9.14)
set(MEGACPP_MIN_NCCL      2.18)   # 2.28.9            2.28.3
