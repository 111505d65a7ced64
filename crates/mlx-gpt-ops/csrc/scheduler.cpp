// MLX's process-wide count of pending tasks, which its eval compares with MAX_ACTIVE_TASKS
// (10) before it queues more (mlx/transforms.cpp, MLX 0.32): lowered by `tasks` while a
// caller evaluates, so that MLX's wait does not apply, and raised back after. Through
// the scheduler's own notifications (mlx/scheduler.h): one lock and one notify_all each,
// about 20 ns, so a few hundred cost microseconds. Why the split training step does
// this, and what bounds its memory instead, is in run_ahead.h.

#include <mlx/device.h>
#include <mlx/scheduler.h>
#include <mlx/stream.h>

extern "C" void mlx_gpt_scheduler_lift(int tasks) {
  // The stream argument is not used by the count; any CPU stream will do.
  const auto s = mlx::core::default_stream(mlx::core::Device::cpu);
  for (int i = 0; i < tasks; ++i) {
    mlx::core::scheduler::notify_task_completion(s);
  }
  for (int i = 0; i < -tasks; ++i) {
    mlx::core::scheduler::notify_new_task(s);
  }
}

extern "C" int mlx_gpt_scheduler_pending() {
  return mlx::core::scheduler::n_active_tasks();
}
