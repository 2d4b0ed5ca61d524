//! Picking allocates nothing: every policy's `pick` runs under a counting
//! global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use fyerrpc::balance::{by_name, hash_key, Candidate, Edit, PickContext, Picker, POLICY_NAMES};
use fyerrpc::Instance;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn picking_never_allocates() {
    let endpoints: Vec<Candidate> = (0..1_000u32)
        .map(|i| {
            let addr = format!("10.0.{}.{}:80", i / 256, i % 256);
            let instance = Instance::new(format!("i{i}"), "S", addr)
                .unwrap()
                .with_weight(1 + i % 97)
                .unwrap();
            Candidate::new(Arc::new(instance))
        })
        .collect();
    let odd = |i: usize| i % 2 == 1;
    let none = |_: usize| false;
    // A picker as built, and one that followed a change of the set (an
    // instance removed, one added, one reweighted): the delta path.
    let extra = Candidate::new(Arc::new(
        Instance::new("extra", "S", "10.9.9.9:80").unwrap(),
    ));
    let edits = [
        Edit::SwapRemove(3),
        Edit::Push(extra),
        Edit::Replace(7, endpoints[7].clone()),
    ];
    let pickers = POLICY_NAMES.iter().flat_map(|name| {
        let built = by_name(name).unwrap().build(&endpoints);
        let edited = Arc::clone(&built)
            .apply(&edits)
            .unwrap_or_else(|| by_name(name).unwrap().build(&endpoints));
        [(*name, built), (*name, edited)]
    });
    let pickers: Vec<(&str, Arc<dyn Picker>)> = pickers.collect();
    for (name, picker) in pickers {
        let before = allocations();
        for k in 0..10_000u64 {
            let ctx = PickContext::new("/S/M");
            let hashed = ctx.with_hash(hash_key(&k.to_le_bytes()));
            picker.pick(&ctx);
            picker.pick(&hashed);
            picker.pick(&hashed.with_eligible(&odd));
            picker.pick(&ctx.with_eligible(&odd));
            if k % 100 == 0 {
                picker.pick(&ctx.with_eligible(&none));
                picker.pick(&hashed.with_eligible(&none));
            }
        }
        assert_eq!(allocations() - before, 0, "{name} allocated while picking");
    }
}
