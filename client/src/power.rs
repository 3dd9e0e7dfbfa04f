//! Whether a laptop should hold back its backups: on battery below a
//! threshold, or on a metered connection. Read only when a snapshot is due,
//! so an idle machine is never woken to ask.

use crate::config::DaemonSettings;
use std::path::Path;

/// Why the daemon waits, if it should.
pub fn hold(settings: &DaemonSettings) -> Option<String> {
    if settings.min_battery_percent > 0
        && let Some(percent) = on_battery(&settings.power_supply_dir)
        && percent < settings.min_battery_percent
    {
        return Some(format!(
            "on battery at {percent}% (below daemon.min_battery_percent = {}%)",
            settings.min_battery_percent
        ));
    }
    if settings.pause_on_metered && settings.metered.unwrap_or_else(networkmanager_metered) {
        return Some("on a metered connection (daemon.pause_on_metered)".into());
    }
    None
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The charge in percent if the machine runs on battery now: no mains
/// supply online and a battery discharging (the kernel's power_supply
/// class: `type`, `online`, `status`, `capacity` of each supply).
pub fn on_battery(supplies: &Path) -> Option<u8> {
    let mut charge: Option<u8> = None;
    for e in std::fs::read_dir(supplies).ok()?.flatten() {
        let dir = e.path();
        match read(&dir, "type").as_deref() {
            Some("Mains") | Some("USB") if read(&dir, "online").as_deref() == Some("1") => {
                return None;
            }
            Some("Battery") if read(&dir, "status").as_deref() == Some("Discharging") => {
                let c = read(&dir, "capacity").and_then(|c| c.parse::<u8>().ok())?;
                charge = Some(charge.map_or(c, |m| m.min(c)));
            }
            _ => {}
        }
    }
    charge
}

/// NetworkManager's `Metered` property (yes or guess-yes), asked over
/// D-Bus with `busctl`; false where there is no NetworkManager.
fn networkmanager_metered() -> bool {
    let out = std::process::Command::new("busctl")
        .args([
            "--system",
            "get-property",
            "org.freedesktop.NetworkManager",
            "/org/freedesktop/NetworkManager",
            "org.freedesktop.NetworkManager",
            "Metered",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    // NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no.
    matches!(out, Ok(o) if o.status.success()
        && matches!(String::from_utf8_lossy(&o.stdout).trim(), "u 1" | "u 3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in files {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn battery_is_read_from_the_power_supply_class() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        assert_eq!(on_battery(p), None, "a desktop has no battery");
        supply(
            p,
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", "Discharging"),
                ("capacity", "15"),
            ],
        );
        supply(p, "AC", &[("type", "Mains"), ("online", "0")]);
        assert_eq!(on_battery(p), Some(15));
        let mut s = crate::config::DaemonConfig::default().settings().unwrap();
        s.power_supply_dir = p.to_path_buf();
        assert!(hold(&s).unwrap().contains("15%"));
        s.min_battery_percent = 10;
        assert_eq!(hold(&s), None);
        supply(p, "AC", &[("type", "Mains"), ("online", "1")]);
        s.min_battery_percent = 20;
        assert_eq!(on_battery(p), None, "plugged in");
        assert_eq!(hold(&s), None);
        s.pause_on_metered = true;
        s.metered = Some(true);
        assert!(hold(&s).unwrap().contains("metered"));
    }
}
