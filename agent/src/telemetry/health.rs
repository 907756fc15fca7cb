//! Machine health from sysinfo: CPU, memory, the data dir's disk, uptime and, where the
//! machine exposes a sensor, temperature.

use std::path::{Path, PathBuf};

use edgefleet_common::telemetry::Health;
use sysinfo::{Components, Disks, System};

/// Keeps the previous CPU reading: usage is the difference between two samples, so the first
/// sample after start-up reads what happened since the sampler was made.
pub struct HealthSampler {
    /// None where sysinfo does not support the platform: health then reads as zeros.
    system: Option<System>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for HealthSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HealthSampler({})", self.data_dir.display())
    }
}

impl HealthSampler {
    pub fn new(data_dir: &Path) -> Self {
        let mut system = System::new().ok();
        if let Some(s) = system.as_mut() {
            s.refresh_cpu_usage();
        }
        Self {
            system,
            // The mount point is matched against the canonical path (symlinks resolved).
            data_dir: data_dir
                .canonicalize()
                .unwrap_or_else(|_| data_dir.to_path_buf()),
        }
    }

    pub fn sample(&mut self) -> Health {
        let (cpu, memory_used_bytes, memory_total_bytes) = match self.system.as_mut() {
            Some(s) => {
                s.refresh_cpu_usage();
                s.refresh_memory();
                (s.global_cpu_usage(), s.used_memory(), s.total_memory())
            }
            None => (0.0, 0, 0),
        };
        let (disk_used_bytes, disk_total_bytes) = Disks::new_with_refreshed_list()
            .ok()
            .and_then(|disks| {
                // The disk whose mount point is the longest prefix of the data dir.
                disks
                    .iter()
                    .filter(|d| self.data_dir.starts_with(d.mount_point()))
                    .max_by_key(|d| d.mount_point().as_os_str().len())
                    .map(|d| {
                        (
                            d.total_space().saturating_sub(d.available_space()),
                            d.total_space(),
                        )
                    })
            })
            .unwrap_or((0, 0));
        let temperature_celsius = Components::new_with_refreshed_list().ok().and_then(|c| {
            c.iter()
                .filter_map(|c| c.temperature())
                .filter(|t| t.is_finite() && (-100.0..=300.0).contains(t))
                .reduce(f32::max)
        });
        Health {
            cpu_percent: if cpu.is_finite() {
                cpu.clamp(0.0, 100.0)
            } else {
                0.0
            },
            memory_used_bytes,
            memory_total_bytes,
            disk_used_bytes,
            disk_total_bytes,
            uptime_secs: System::uptime().unwrap_or(0),
            temperature_celsius,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_reports_plausible_health() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = HealthSampler::new(dir.path());
        let h = s.sample();
        h.validate().expect("valid health");
        assert!(h.memory_total_bytes > 0 && h.memory_used_bytes <= h.memory_total_bytes);
        assert!(h.disk_total_bytes > 0, "the temp dir's disk is found");
        assert!(h.uptime_secs > 0);
    }
}
