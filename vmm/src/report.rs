//! Crash reports: the registers of a vCPU that stopped abnormally, KVM's diagnostic data, and a
//! walk of the page tables for RIP.

use std::fmt;

use kvm_bindings::{
    kvm_regs, kvm_segment, kvm_sregs, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_SIMUL_EX, KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
};

/// The state of a vCPU at a crash.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashReport {
    /// Index of the vCPU.
    pub vcpu: u32,
    /// One line with the exit KVM reported.
    pub summary: String,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Further lines: KVM's diagnostic data and the page walk for RIP.
    pub details: Vec<String>,
}

/// KVM's data for `KVM_EXIT_INTERNAL_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalError {
    /// `internal.suberror`.
    pub suberror: u32,
    /// `internal.data[..ndata]`.
    pub data: Vec<u64>,
    /// The bytes of the instruction that failed to emulate, when KVM supplied them.
    pub instruction: Option<Vec<u8>>,
}

impl InternalError {
    /// Returns the name of the suberror.
    pub fn suberror_name(&self) -> &'static str {
        match self.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "exit while delivering an event",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
            _ => "unknown suberror",
        }
    }

    /// Returns the one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "KVM_EXIT_INTERNAL_ERROR, suberror {} ({})",
            self.suberror,
            self.suberror_name()
        )
    }

    /// Returns the detail lines: the data words and the instruction bytes.
    pub fn detail_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.data.is_empty() {
            let words: Vec<String> = self.data.iter().map(|word| format!("{word:#x}")).collect();
            lines.push(format!("internal error data: {}", words.join(" ")));
        }
        if let Some(bytes) = &self.instruction {
            lines.push(format!("instruction bytes: {}", hex::encode(bytes)));
        }
        lines
    }
}

fn segment_line(name: &str, segment: &kvm_segment) -> String {
    format!(
        "{name:<3} sel={:#06x} base={:#018x} limit={:#010x} type={:#x} s={} dpl={} p={} db={} l={} g={} unusable={}",
        segment.selector,
        segment.base,
        segment.limit,
        segment.type_,
        segment.s,
        segment.dpl,
        segment.present,
        segment.db,
        segment.l,
        segment.g,
        segment.unusable
    )
}

impl CrashReport {
    /// Returns the register dump, one line per group.
    pub fn register_lines(&self) -> Vec<String> {
        let r = &self.regs;
        let s = &self.sregs;
        let mut lines = vec![
            format!(
                "rip={:#018x} rflags={:#010x} rsp={:#018x} rbp={:#018x}",
                r.rip, r.rflags, r.rsp, r.rbp
            ),
            format!(
                "rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
                r.rax, r.rbx, r.rcx, r.rdx
            ),
            format!(
                "rsi={:#018x} rdi={:#018x} r8={:#018x}  r9={:#018x}",
                r.rsi, r.rdi, r.r8, r.r9
            ),
            format!(
                "r10={:#018x} r11={:#018x} r12={:#018x} r13={:#018x}",
                r.r10, r.r11, r.r12, r.r13
            ),
            format!("r14={:#018x} r15={:#018x}", r.r14, r.r15),
            format!(
                "cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} efer={:#x}",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            ),
            format!(
                "gdtr base={:#x} limit={:#x}  idtr base={:#x} limit={:#x}",
                s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
            ),
        ];
        for (name, segment) in [
            ("cs", &s.cs),
            ("ds", &s.ds),
            ("es", &s.es),
            ("fs", &s.fs),
            ("gs", &s.gs),
            ("ss", &s.ss),
            ("tr", &s.tr),
            ("ldt", &s.ldt),
        ] {
            lines.push(segment_line(name, segment));
        }
        lines
    }
}

impl fmt::Display for CrashReport {
    /// Writes the register dump and the detail lines, each indented by two spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.register_lines().iter().chain(&self.details) {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_lines() {
        let error = InternalError {
            suberror: KVM_INTERNAL_ERROR_EMULATION,
            data: vec![0x1, 0xfee0_0000],
            instruction: Some(vec![0x0f, 0x01, 0xd9]),
        };
        assert_eq!(
            error.summary(),
            "KVM_EXIT_INTERNAL_ERROR, suberror 1 (emulation failure)"
        );
        assert_eq!(
            error.detail_lines(),
            vec![
                "internal error data: 0x1 0xfee00000".to_string(),
                "instruction bytes: 0f01d9".to_string()
            ]
        );
    }

    #[test]
    fn register_dump_names_rip_and_segments() {
        let report = CrashReport {
            vcpu: 0,
            summary: String::new(),
            regs: kvm_regs {
                rip: 0x10002,
                rflags: 0x2,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cr3: 0x1a000,
                ..Default::default()
            },
            details: vec!["PDE is not present".into()],
        };
        let text = report.to_string();
        assert!(text.starts_with("  rip=0x0000000000010002 rflags=0x00000002"));
        assert!(text.contains("cr3=0x000000000001a000"));
        assert!(text.contains("  cs  sel=0x0000"));
        assert!(text.ends_with("  PDE is not present\n"));
    }
}
