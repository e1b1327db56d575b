package ort

// ONNX Runtime's LoRA adapter API (C API 1.20+: CreateLoraAdapter,
// CreateLoraAdapterFromArray, ReleaseLoraAdapter, RunOptionsAddActiveLoraAdapter),
// which github.com/yalue/onnxruntime_go v1.27.0 does not wrap. The library is the one
// Init loaded: dlopen of the same path returns the same handle, and the OrtApi table
// comes from its OrtGetApiBase()->GetApi(24), as yalue gets it.
//
// The OrtApi struct is a list of function pointers that ONNX Runtime only ever
// appends to, so a function's index never changes; the indices below were read off
// onnxruntime_c_api.h of API version 24 (offsetof / sizeof(void*)), and
// TestLoraAPIIndices recomputes them from the header yalue ships when it can.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct sptOrtApiBase {
	const void* (*GetApi)(uint32_t version);
	const char* (*GetVersionString)(void);
} sptOrtApiBase;

enum {
	SPT_ORT_API_VERSION = 24,
	SPT_IDX_GetErrorMessage = 2,
	SPT_IDX_ReleaseStatus = 93,
	SPT_IDX_CreateLoraAdapter = 280,
	SPT_IDX_CreateLoraAdapterFromArray = 281,
	SPT_IDX_ReleaseLoraAdapter = 282,
	SPT_IDX_RunOptionsAddActiveLoraAdapter = 283,
};

typedef const char* (*sptGetErrorMessage)(const void* status);
typedef void (*sptReleaseStatus)(void* status);
typedef void* (*sptCreateLoraAdapter)(const char* path, void* allocator, void** out);
typedef void* (*sptCreateLoraAdapterFromArray)(const void* bytes, size_t n, void* allocator, void** out);
typedef void (*sptReleaseLoraAdapter)(void* adapter);
typedef void* (*sptRunOptionsAddActiveLoraAdapter)(void* options, const void* adapter);

static void* const* spt_api;

// spt_lora_init loads the OrtApi table from the library at path. It returns NULL or
// an error message (static storage).
static const char* spt_lora_init(const char* path) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) return dlerror();
	const sptOrtApiBase* (*get)(void) = (const sptOrtApiBase* (*)(void))dlsym(h, "OrtGetApiBase");
	if (!get) return "OrtGetApiBase not found in the ONNX Runtime library";
	const sptOrtApiBase* base = get();
	if (!base) return "OrtGetApiBase returned NULL";
	const void* api = base->GetApi(SPT_ORT_API_VERSION);
	if (!api) return "this ONNX Runtime does not provide C API version 24 (it must be 1.24 or newer)";
	spt_api = (void* const*)api;
	return NULL;
}

// spt_status takes an OrtStatus: NULL for success, else a malloc'd copy of its
// message (the status is released).
static char* spt_status(void* st) {
	if (!st) return NULL;
	const char* m = ((sptGetErrorMessage)spt_api[SPT_IDX_GetErrorMessage])(st);
	char* out = strdup(m ? m : "unknown ONNX Runtime error");
	((sptReleaseStatus)spt_api[SPT_IDX_ReleaseStatus])(st);
	return out;
}

static char* spt_create_lora_adapter(const char* path, void** out) {
	return spt_status(((sptCreateLoraAdapter)spt_api[SPT_IDX_CreateLoraAdapter])(path, NULL, out));
}

static char* spt_create_lora_adapter_from_array(const void* bytes, size_t n, void** out) {
	return spt_status(((sptCreateLoraAdapterFromArray)spt_api[SPT_IDX_CreateLoraAdapterFromArray])(bytes, n, NULL, out));
}

static void spt_release_lora_adapter(void* a) {
	((sptReleaseLoraAdapter)spt_api[SPT_IDX_ReleaseLoraAdapter])(a);
}

static char* spt_run_options_add_active_lora_adapter(void* options, const void* a) {
	return spt_status(((sptRunOptionsAddActiveLoraAdapter)spt_api[SPT_IDX_RunOptionsAddActiveLoraAdapter])(options, a));
}
*/
import "C"

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"unsafe"

	onnxruntime "github.com/yalue/onnxruntime_go"
)

// Indices of the functions lora.go calls in ONNX Runtime's OrtApi table (API 24).
var loraAPIIndices = map[string]int{
	"GetErrorMessage":                C.SPT_IDX_GetErrorMessage,
	"ReleaseStatus":                  C.SPT_IDX_ReleaseStatus,
	"CreateLoraAdapter":              C.SPT_IDX_CreateLoraAdapter,
	"CreateLoraAdapterFromArray":     C.SPT_IDX_CreateLoraAdapterFromArray,
	"ReleaseLoraAdapter":             C.SPT_IDX_ReleaseLoraAdapter,
	"RunOptionsAddActiveLoraAdapter": C.SPT_IDX_RunOptionsAddActiveLoraAdapter,
}

var (
	loraOnce sync.Once
	loraErr  error
)

func loraInit() error {
	if err := Init(); err != nil {
		return err
	}
	loraOnce.Do(func() {
		if err := runOptionsLayoutOK(); err != nil {
			loraErr = err
			return
		}
		p := C.CString(LibraryPath())
		defer C.free(unsafe.Pointer(p))
		if msg := C.spt_lora_init(p); msg != nil {
			loraErr = fmt.Errorf("ort: LoRA adapter API: %s", C.GoString(msg))
		}
	})
	return loraErr
}

// LoraAdapter is an .onnx_adapter file loaded by ONNX Runtime. It may be used by
// many runs, of many sessions, at once; Close it when no run uses it any more.
type LoraAdapter struct {
	name string
	mu   sync.RWMutex
	p    unsafe.Pointer // OrtLoraAdapter*
}

// LoadLoraAdapter loads an .onnx_adapter file with ONNX Runtime's own loader
// (CreateLoraAdapter: it memory-maps the file and checks its format). The adapter
// stays on the CPU.
func LoadLoraAdapter(path string) (*LoraAdapter, error) {
	if err := loraInit(); err != nil {
		return nil, err
	}
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	var out unsafe.Pointer
	if msg := C.spt_create_lora_adapter(cp, &out); msg != nil {
		defer C.free(unsafe.Pointer(msg))
		return nil, fmt.Errorf("ort: adapter %s: %s", path, C.GoString(msg))
	}
	return newLoraAdapter(path, out), nil
}

// LoraAdapterFromBytes loads an adapter from its bytes (CreateLoraAdapterFromArray,
// which copies them).
func LoraAdapterFromBytes(b []byte) (*LoraAdapter, error) {
	if err := loraInit(); err != nil {
		return nil, err
	}
	name := fmt.Sprintf("in-memory adapter (%d bytes)", len(b))
	if len(b) == 0 {
		return nil, fmt.Errorf("ort: %s: empty", name)
	}
	cb := C.CBytes(b)
	defer C.free(cb)
	var out unsafe.Pointer
	if msg := C.spt_create_lora_adapter_from_array(cb, C.size_t(len(b)), &out); msg != nil {
		defer C.free(unsafe.Pointer(msg))
		return nil, fmt.Errorf("ort: %s: %s", name, C.GoString(msg))
	}
	return newLoraAdapter(name, out), nil
}

func newLoraAdapter(name string, p unsafe.Pointer) *LoraAdapter {
	a := &LoraAdapter{name: name, p: p}
	runtime.SetFinalizer(a, func(a *LoraAdapter) { a.Close() })
	return a
}

// Name is the adapter's path (or a description).
func (a *LoraAdapter) Name() string { return a.name }

// Close releases the adapter; runs using it finish first. Closing twice is harmless.
func (a *LoraAdapter) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.p != nil {
		C.spt_release_lora_adapter(a.p)
		a.p = nil
	}
	return nil
}

// runOptionsLayoutOK checks that yalue's RunOptions is still a struct holding only
// the OrtRunOptions pointer, which runOptionsPtr reads.
func runOptionsLayoutOK() error {
	t := reflect.TypeOf(onnxruntime.RunOptions{})
	if t.NumField() != 1 || t.Field(0).Offset != 0 || t.Field(0).Type.Kind() != reflect.Pointer {
		return errors.New("ort: this onnxruntime_go's RunOptions layout is not the one lora.go knows (v1.27.0: one OrtRunOptions pointer); update lora.go")
	}
	return nil
}

// runOptionsPtr is the OrtRunOptions* inside yalue's RunOptions.
func runOptionsPtr(o *onnxruntime.RunOptions) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(o))
}

// RunWithAdapters is Run with ONNX Runtime's active LoRA adapters: each adapter's
// tensors are fed, by name, to the model inputs they name (adapter inputs with a
// default initializer), for this run only; inputs still names the model's required
// inputs only. With no adapters it is Run. ONNX Runtime checks each adapter tensor
// against the model only when it runs; use export/adapter.Check first for clear
// errors.
func (s *Session) RunWithAdapters(inputs map[string]Tensor, adapters ...*LoraAdapter) (map[string]Tensor, error) {
	if len(adapters) == 0 {
		return s.Run(inputs)
	}
	out, err := s.runWithAdapters(inputs, adapters)
	if err != nil {
		return nil, fmt.Errorf("ort: %s: %w", s.name, err)
	}
	return out, nil
}

func (s *Session) runWithAdapters(inputs map[string]Tensor, adapters []*LoraAdapter) (map[string]Tensor, error) {
	if err := loraInit(); err != nil {
		return nil, err
	}
	opts, err := onnxruntime.NewRunOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	for _, a := range adapters {
		a.mu.RLock()
		defer a.mu.RUnlock()
		if a.p == nil {
			return nil, fmt.Errorf("adapter %s is closed", a.name)
		}
		if msg := C.spt_run_options_add_active_lora_adapter(runOptionsPtr(opts), a.p); msg != nil {
			defer C.free(unsafe.Pointer(msg))
			return nil, fmt.Errorf("adapter %s: %s", a.name, C.GoString(msg))
		}
	}
	return s.run(inputs, opts)
}
