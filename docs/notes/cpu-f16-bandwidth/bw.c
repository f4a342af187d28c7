// Streaming-read bandwidth: T threads (pinned to cores 0..T-1), each reads
// its 1/T of a buffer once per run; best of REPS runs, timed from the first
// thread's start to the last one's end.
//   gcc -O2 -o bw bw.c -lpthread
//   ./bw T MODE MiB REPS        anonymous buffer (4 KiB pages; HUGE=1: THP)
//   FILE=f.gguf ./bw T MODE 0 REPS   the file, memory-mapped (as strata and
//                                    llama.cpp read weights), pre-faulted
// MODE 0: 256-bit loads xor-ed; 1: 8 f16 -> f32 (vcvtph2ps) added, 4 chains;
// 2: as 1 with a prefetcht0 1 KiB ahead.
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
static size_t N; static uint8_t *buf; static int T; static int mode;
static pthread_barrier_t bar; volatile double sink[64]; static double t_start[64], t_end[64];
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx2,f16c,fma")))
static void *work(void *arg){
  long id=(long)arg; size_t per=N/T; uint8_t *p=buf+id*per, *e=p+per;
  cpu_set_t s; CPU_ZERO(&s); CPU_SET(id,&s); pthread_setaffinity_np(pthread_self(),sizeof s,&s);
  pthread_barrier_wait(&bar); t_start[id]=now();
  __m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;
  __m256i i0=_mm256_setzero_si256(),i1=i0,i2=i0,i3=i0;
  if(mode==0){ // plain 256-bit loads, xor
    for(;p<e;p+=128){
      i0=_mm256_xor_si256(i0,_mm256_load_si256((void*)p));
      i1=_mm256_xor_si256(i1,_mm256_load_si256((void*)(p+32)));
      i2=_mm256_xor_si256(i2,_mm256_load_si256((void*)(p+64)));
      i3=_mm256_xor_si256(i3,_mm256_load_si256((void*)(p+96)));
    }
  } else { // f16 -> f32 and add (as a decode kernel does), mode 2: + prefetch 1 KiB ahead
    for(;p<e;p+=64){
      if(mode==2) _mm_prefetch((const char*)p+1024,_MM_HINT_T0);
      a0=_mm256_add_ps(a0,_mm256_cvtph_ps(_mm_load_si128((void*)p)));
      a1=_mm256_add_ps(a1,_mm256_cvtph_ps(_mm_load_si128((void*)(p+16))));
      a2=_mm256_add_ps(a2,_mm256_cvtph_ps(_mm_load_si128((void*)(p+32))));
      a3=_mm256_add_ps(a3,_mm256_cvtph_ps(_mm_load_si128((void*)(p+48))));
    }
  }
  float f[8]; _mm256_storeu_ps(f,_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3)));
  uint64_t u[4]; _mm256_storeu_si256((void*)u,_mm256_xor_si256(_mm256_xor_si256(i0,i1),_mm256_xor_si256(i2,i3)));
  sink[id]=f[0]+u[0]; t_end[id]=now();
  return 0;
}
int main(int c,char**v){
  T=atoi(v[1]); mode=atoi(v[2]); size_t mib=atol(v[3]); int reps=atoi(v[4]);
  N=mib<<20;
  if(getenv("FILE")){int fd=open(getenv("FILE"),O_RDONLY); struct stat st; fstat(fd,&st); N=st.st_size&~((size_t)4095); buf=mmap(0,st.st_size,PROT_READ,MAP_PRIVATE,fd,0); if(getenv("HUGE"))madvise(buf,st.st_size,MADV_HUGEPAGE); volatile uint8_t z=0; for(size_t i=0;i<N;i+=4096) z+=buf[i];}
  else {buf=aligned_alloc(1<<21,N); if(getenv("HUGE"))madvise(buf,N,MADV_HUGEPAGE); else madvise(buf,N,MADV_NOHUGEPAGE); for(size_t i=0;i<N;i+=2){buf[i]=i*7;buf[i+1]=0x3c;}}
  N=N/(T*4096)*(T*4096);
  double best=0;
  for(int r=0;r<reps;r++){
    pthread_t th[8]; pthread_barrier_init(&bar,0,T);
    for(long i=0;i<T;i++) pthread_create(&th[i],0,work,(void*)i);
    for(int i=0;i<T;i++) pthread_join(th[i],0);
    double a=1e30,b=0; for(int i=0;i<T;i++){if(t_start[i]<a)a=t_start[i]; if(t_end[i]>b)b=t_end[i];}
    double gbs=N/(b-a)/1e9; if(gbs>best)best=gbs;
    pthread_barrier_destroy(&bar);
  }
  printf("threads=%d mode=%d size=%zuMiB best=%.2f GB/s\n",T,mode,mib,best);
}
