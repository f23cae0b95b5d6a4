//! `bench selftest`: the gradient checks on a device (fewshot::run::selftest).

use anyhow::Result;
use fewshot::device::DeviceSpec;

pub fn run(device: DeviceSpec) -> Result<()> {
    let dev = device.open()?;
    let t = std::time::Instant::now();
    let checks = fewshot::run::selftest::run_all(&dev)?;
    println!(
        "{:<72} {:>10} {:>10} {:>9}  result",
        "check", "worst", "tolerance", "compared"
    );
    for c in &checks {
        match &c.skipped {
            Some(why) => println!(
                "{:<72} {:>10} {:>10} {:>9}  skipped: {why}",
                c.name, "", "", ""
            ),
            None => println!(
                "{:<72} {:>10.1e} {:>10.0e} {:>9}  {}",
                c.name,
                c.worst,
                c.tolerance,
                c.compared,
                if c.passed() { "ok" } else { "FAILED" }
            ),
        }
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    println!(
        "{} checks on {device} in {:.1}s: {}",
        checks.len(),
        t.elapsed().as_secs_f64(),
        if failed == 0 {
            "all passed".to_string()
        } else {
            format!("{failed} FAILED")
        }
    );
    anyhow::ensure!(failed == 0, "{failed} gradient check(s) failed on {device}");
    Ok(())
}
