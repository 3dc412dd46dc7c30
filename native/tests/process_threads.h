/* What the thread tests (thread_budget.c, host_environment.c) count: the calling process's
 * threads, from /proc/self/task. */
#ifndef CTRT_TESTS_PROCESS_THREADS_H
#define CTRT_TESTS_PROCESS_THREADS_H

#include <dirent.h>
#include <stdio.h>
#include <unistd.h>

static int thread_count(void) {
  DIR* tasks = opendir("/proc/self/task");
  int count = 0;
  if (!tasks) return -1;
  for (struct dirent* entry = readdir(tasks); entry; entry = readdir(tasks)) count += entry->d_name[0] != '.';
  closedir(tasks);
  return count;
}

/* 1 (after printing "<test>: skipped ...") when the machine has fewer than `threads` online
 * cores: `threads` could not be opened there. */
static int too_few_cores(const char* test, int threads) {
  if (sysconf(_SC_NPROCESSORS_ONLN) >= threads) return 0;
  printf("%s: skipped, fewer than %d online cores\n", test, threads);
  return 1;
}

#endif
