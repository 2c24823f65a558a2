// crash_report.hpp — a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL) prints what crashed to stderr
// before the process dies: the signal, the pid, the launcher's rank (RANK / SLURM_PROCID / OMPI rank) and
// a backtrace (glibc backtrace_symbols_fd; the executable links with -rdynamic so frames carry names).
// The handler only uses async-signal-safe calls, then restores the default action and re-raises, so the
// exit status stays 128+signal for launchers and scripts.
#pragma once

namespace megacpp {
void install_crash_handler();
}
